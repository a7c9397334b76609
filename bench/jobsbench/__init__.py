"""Continual-learning benchmark that drives the product's Job entrypoints in-process.

Every method is ``dynamiclora train`` (:func:`dynamiclora.training.trainer.run_training`) and, for
DynamicLoRA, ``dynamiclora consolidate --mode migrate``
(:func:`dynamiclora.training.consolidate.run_consolidation`), with the argument lists the operator's
own builders emit (:mod:`jobsbench.operator_args`). Only the pretraining of the base model, the
writing of interaction records and the scoring of the served stack live here. See
docs/benchmarks-jobs.md.
"""
