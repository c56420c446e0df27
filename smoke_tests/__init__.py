"""The post-deploy smoke tests that `copilot-fleet verify` runs; installed as copilot_fleet.smoke_tests."""
