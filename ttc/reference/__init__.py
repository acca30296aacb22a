"""The shipped reference workload: tiny policy and process-reward models."""

from pathlib import Path

MODELS_DIR = Path(__file__).parent / "models"
POLICY_PATH = MODELS_DIR / "policy"
PRM_PATH = MODELS_DIR / "prm"
