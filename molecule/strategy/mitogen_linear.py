"""Mitogen's linear strategy, from the pinned mitogen package, for the suite's runs (ANSIBLE_STRATEGY in
.config/molecule/config.yml names this directory and the strategy)."""

from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule  # noqa: F401
