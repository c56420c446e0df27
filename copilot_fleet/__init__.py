"""copilot-fleet: deploy and verify fleets of GitHub Copilot CLI servers."""

__version__ = "0.1.0"

# The SDK release and the CLI build it was made for: each SDK release pins one CLI version.
SDK_VERSION = "1.0.25"
CLI_VERSION = "1.0.102"
