"""Pulumi components of copilot-fleet, by platform (`kubernetes`, `azure`), and what they share (`common`)."""
