"""``python -m trainer.schema [overrides...]``: the knob reference of every config group."""

import sys

from trainer.schema.reference import compose_every_option, reference_markdown

print(reference_markdown(compose_every_option(sys.argv[1:])))
