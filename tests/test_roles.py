"""Every role variable is a documented default, in the argument spec, and in the role README."""

import re
from pathlib import Path

import pytest
import yaml

ROLES = sorted(p for p in (Path(__file__).parent.parent / "roles").iterdir() if p.is_dir())
# Secrets have no default on purpose (some are needed only in some setups, such as the RabbitMQ
# API password with Flower); they must still be in the spec and README.
REQUIRED = {"celery_broker_password", "redis_password", "rabbitmq_erlang_cookie", "celery_flower_cookie_secret",
            "celery_flower_broker_api_password"}


def load(path):
    return yaml.safe_load(path.read_text()) or {}


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_defaults_spec_and_readme_agree(role):
    defaults = set(load(role / "defaults/main.yml"))
    spec = load(role / "meta/argument_specs.yml")["argument_specs"]
    options = set(spec["main"]["options"])
    readme = role.joinpath("README.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_]+)`", readme, re.M)) | {
        name for pair in re.findall(r"^\| `([a-z_]+)` / `([a-z_]+)`", readme, re.M) for name in pair
    }
    # Inputs the spec requires (an app's identity, passed by the plays) have no default either.
    required = {name for name, option in spec["main"]["options"].items() if option.get("required")}
    assert defaults | ((REQUIRED | required) & options) == options, "defaults/main.yml and the argument spec differ"
    assert options <= documented, f"missing from README.md: {sorted(options - documented)}"
    assert all(name.startswith(role.name + "_") for name in options)
    # The preflight play validates with the same spec.
    if "validate" in spec:
        assert spec["validate"] == spec["main"]
