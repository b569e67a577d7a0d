"""Load-test scenarios: rollouts under steady open-loop load."""
