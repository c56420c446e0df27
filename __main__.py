"""The Pulumi program of copilot-fleet (`pulumi up`): see copilot_fleet/program.py."""
from copilot_fleet.program import run

run()
