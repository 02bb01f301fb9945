"""Pure domain code. Nothing in this package imports dagster."""
