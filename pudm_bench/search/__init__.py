"""The search layer: search spaces, budgets, suites, objectives, constraints and the Pareto front."""
