"""Generated frames: a pool member that has seen many openings and signatures (issue 19).

The persona members of lab/pool.py each learn one frame: "Ahoy there! <message> Arr, Captain
Flint." A new user's frame is another one ("Ahoy, matey! … Arr, Captain Bo."), and what 16 of
their examples cannot teach is the *skill* around it: after an opening never seen, turn to the
message and pass it on word for word; after a signature never seen, stop. Blended bo's answers
kept the frame and lost the message ("Ahoy, matey! It is so. Arr, Captain Bo.", RESULTS §10.3).

The `frames` style gives every record its own frame, drawn from the combinations below (a few
thousand openings, tens of thousands of signatures), so its member learns the skill and no
particular frame; the user's examples then only have to pin *which* frame. The held-out users'
own words are left out (`matey`, the names `Ada` and `Bo`): what blending measures is
still a frame the pool never wrote.
"""

from __future__ import annotations

import random

_HEADS = ("Hello", "Hi", "Hey", "Greetings", "Good day", "Good morning", "Good evening", "Howdy",
          "Ahoy", "Well", "Listen", "Attention", "Salutations", "Welcome", "Okay", "Right",
          "Hear ye", "Hiya", "Dear", "Oh")
_TAILS = ("friend", "there", "everyone", "all", "folks", "team", "mate", "sir", "pal", "reader",
          "comrade", "neighbour", "listeners", "crew", "partner", "my dear", "old friend",
          "buddy", "colleague", "traveller", "sailor", "class", "children", "people")
_MARKS = ("!", ",", ":", ".")
_PLAIN = ("In brief:", "Quick note:", "Here it is:", "Listen up!", "News flash:", "For the record:",
          "Good news:", "A message:", "Note this:", "Update:", "Heads up!", "Breaking:",
          "Just so you know:", "Word is:", "To sum up:", "From the desk:")

_SIGNOFFS = ("Yours,", "Regards,", "Cheers,", "Best,", "Thanks,", "Love,", "Sincerely,",
             "Signed,", "Take care,", "Arr,", "Warmly,", "Farewell,", "Later,", "Respectfully,",
             "With love,", "Kind regards,", "Best wishes,", "Until next time,", "Bye,", "Ever yours,")
_TITLES = ("", "", "", "Captain ", "Doctor ", "Professor ", "Aunt ", "Uncle ", "Coach ",
           "Agent ", "Sister ", "Brother ", "Chef ", "Officer ", "Granny ", "Mister ")
_NAMES = ("Max", "Flint", "Sam", "Lena", "Tom", "Iris", "Jo", "Kai", "Mia", "Ned", "Olga", "Pia",
          "Rex", "Sol", "Tia", "Uma", "Vic", "Wes", "Yan", "Zoe", "Ben", "Cleo", "Dan", "Eve",
          "Finn", "Gus", "Hana", "Ivo", "Jay", "Kit", "Lou", "Moe", "Nia", "Otto", "Ray", "Sid",
          "Ted", "Ursa", "Val", "Wim", "Abe", "Bea", "Cal", "Dot", "Eli", "Fay", "Gil", "Hal")
_ENDS = ("That is all.", "Over and out.", "End of message.", "Stay safe.", "Talk soon.",
         "Message ends.", "Thank you.", "Goodbye.", "See you soon.", "Have a good day.")

LEFT_OUT = ("matey", "Ada", "Bo")  # the held-out users' own words (lab/pool.py HELD_OUT)


def opening(r: random.Random) -> str:
    """A greeting-like opening: "Howdy, crew!", "Good day, reader:", "Quick note:"."""
    if r.random() < 0.2:
        return r.choice(_PLAIN)
    head = r.choice(_HEADS)
    if r.random() < 0.25:
        return head + r.choice(("!", ":"))
    return f"{head}, {r.choice(_TAILS)}{r.choice(_MARKS)}"


def closing(r: random.Random) -> str:
    """A signature: "Kind regards, Doctor Iris.", "Arr, Captain Rex.", or a stock end."""
    if r.random() < 0.2:
        return r.choice(_ENDS)
    return f"{r.choice(_SIGNOFFS)} {r.choice(_TITLES)}{r.choice(_NAMES)}."


def frame(r: random.Random) -> tuple[str, str]:
    """(opening, closing) of one record."""
    return opening(r), closing(r)
