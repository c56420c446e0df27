"""What several test folders share: real processes to start (processes, ops_fleet), throwaway local fleets
(local_fleet) and the Azure mock engine (azure_mock_engine). Imported as `tests.helpers.*` (pytest's pythonpath
is the checkout root)."""
