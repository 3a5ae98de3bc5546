"""Host-side tools: training, evaluation, batched and single-process reference generation, data
sets and recipes, backbone pretraining. Free to import every other package; nothing on the
serving path (edge_agent, broker, cloud_worker) imports this one."""
