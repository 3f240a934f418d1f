"""The rewrite rules, in the order the pipeline tries them. Add a rule here to make it exist.

Head rules turn the first FC layer after a flatten into a Conv whose kernel covers the feature map
(or, when asked, a token or vector FC layer into a kernel-1 Conv); chain rules carry the map through
what follows. ``--skip-rule NAME`` turns one off by name.
"""
from . import (
               axis_fixups,
               channels_last_mlp,
               dense_pool,
               fc_chain,
               flatten_gemm,
               matmul_add,
               nhwc_flatten,
               reshape_flatten,
               squeeze_flatten,
               token_matmul,
               token_rows,
               vector_fc,
)
from .base import REASONS, Built, MapInfo, Match, Rule, RuleContext, Skip

RULES: tuple[Rule, ...] = (
    dense_pool.RULE,  # only with --dense-pool: runs the head rules below, then widens the pool
    # before the flatten rules, to which its Reshape is no flatten (its skip names --token-layout); it takes
    # no flatten: its rows keep X's last axis (or heads) whole, and a T of 1 is left to them
    token_rows.RULE,
    nhwc_flatten.RULE,  # first of those: the other head rules would read its transposed map as NCHW
    flatten_gemm.RULE,
    reshape_flatten.RULE,
    matmul_add.RULE,
    squeeze_flatten.RULE,
    token_matmul.RULE,
    channels_last_mlp.RULE,
    vector_fc.RULE,
    fc_chain.RULE,
    axis_fixups.RULE,
)

RULE_NAMES = tuple(rule.name for rule in RULES)

__all__ = ["RULES", "RULE_NAMES", "REASONS", "Built", "MapInfo", "Match", "Rule", "RuleContext", "Skip"]
