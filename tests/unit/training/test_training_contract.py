"""The Job contract: a config rendered by ``to_argv`` is parsed back by the entrypoint into the same config."""

from __future__ import annotations

from dynamiclora.cli import build_parser
from dynamiclora.training.options import ConsolidateConfig, TrainConfig, from_namespace, to_argv


def test_train_config_round_trips_every_kind_of_field() -> None:
    cfg = TrainConfig(base_model="/m", data="s3://b/p/alice", output_store="s3://b/p", tier="t", agent="alice",
                      frozen=["s3://b/p/ns/a/v000002", "s3://b/p/ns/s/v000001"], init_from="latest",
                      target_modules=["q_proj", "v_proj"], lr=0.00012345678901234, steps=7, max_records=3,
                      exclude_window=["2026-01-01T00:00:00Z/2026-01-02T00:00:00Z"], gate_max_regression=0.05,
                      screen_threshold=0.6, free_threshold=0.3, free_decay=0.1, energy_budget=12.5,
                      plastic_rank=2, bad_lines="skip")  # fmt: skip
    argv = to_argv(cfg)
    assert from_namespace(TrainConfig, build_parser().parse_args(["train", *argv])) == cfg
    assert argv[argv.index("--lr") + 1] == "0.00012345678901234"  # every digit: the number, not a rounding
    assert argv.count("--frozen") == 2 and "--result-file" not in argv  # None is left out


def test_consolidate_config_round_trips_with_booleans_and_weights() -> None:
    cfg = ConsolidateConfig(mode="consensus", dest="file:///s/ns/sw", agent_tier=["file:///s/ns/a", "file:///s/ns/b"],
                            weights=[1.0, 0.25], update_agents=False, emergency_bypass=False, outlier_threshold=-0.5)
    argv = to_argv(cfg)
    assert "--no-update-agents" in argv and "--no-emergency-bypass" in argv
    assert from_namespace(ConsolidateConfig, build_parser().parse_args(["consolidate", *argv])) == cfg
