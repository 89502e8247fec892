"""Drive the real app from outside (server, browser, run state) for tests, benchmarks, scripts."""
