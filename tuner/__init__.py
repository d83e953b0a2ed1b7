"""The tuner: policies, study specs, the Optuna search, MLflow tracking, export and reports."""

from tuner.policy import POLICY_SCHEMA_VERSION, Policy

__all__ = ["POLICY_SCHEMA_VERSION", "Policy"]
