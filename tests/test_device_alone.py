"""The device runtime stands alone (issue 21 item 1, the strong way): in a fresh interpreter where
importing the worker, the broker, the host tools, the load tester or the CLI raises, a bundle is
loaded and a whole session runs against a live stack; its tokens equal the reference's."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from lab.reference import ReferenceGenerator
from spa.stack import LocalStack

FORBIDDEN = ("cloud_worker", "broker", "lab", "loadgen", "spa")

DEVICE = textwrap.dedent("""
    import asyncio, json, sys

    FORBIDDEN = {forbidden!r}

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in FORBIDDEN:
                raise ImportError(f"the device runtime imported {{name}}")
            return None

    sys.meta_path.insert(0, Refuse())
    from edge_agent.agent import EdgeAgent
    from edge_agent.bundle import load_bundle
    from routing.security import ClientKeys

    async def main():
        agent = EdgeAgent(load_bundle({bundle!r}), {broker!r},
                          keys=ClientKeys.from_dir({keys!r}, "agent", "agent"))
        try:
            stream = agent.generate({prompt!r}, 24, "spa")
            text = "".join([piece.text async for piece in stream])
        finally:
            await agent.close()
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
        print(json.dumps({{"tokens": stream.tokens, "m": stream.stats.m, "text": text,
                          "loaded": loaded}}))

    asyncio.run(main())
""")


def test_device_runtime_alone_runs_a_session(backbone_dir, bundle_dir, backbone, edge, prompts,
                                              tmp_path):
    with LocalStack(backbone_dir, workers=1, log_dir=tmp_path) as stack:
        code = DEVICE.format(forbidden=FORBIDDEN, bundle=str(bundle_dir), broker=stack.agents_addr,
                             keys=str(stack.key_dir), prompt=prompts[0])
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    want = ReferenceGenerator(backbone, edge).generate(prompts[0], 24, "spa")
    assert got["loaded"] == []
    assert got["tokens"] == want.tokens and got["m"] == want.stats.m
    assert got["text"] == edge.tokenizer.decode(want.tokens, skip_special_tokens=True)
