"""What several test folders share: real processes to start (processes, ops_fleet, store_processes: the session
store's), throwaway local fleets (local_fleet), the Azure mock engine (azure_mock_engine), rendered pods in podman
(kubelet, stackworld) and a prompt-injected model's tool runs (attacker). Imported as `tests.helpers.*` (pytest's
pythonpath is the checkout root)."""
