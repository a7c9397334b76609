"""The continual-learning benchmark (issue 9): does the tier hierarchy remember?

Modules: :mod:`.data` (synthetic facts, templates, task windows), :mod:`.lora` (in-process model,
PEFT tiers as :data:`~dynamiclora.memory.TierDelta`, training and evaluation), :mod:`.methods`
(DynamicLoRA tier stack and the baselines), :mod:`.metrics` (accuracy matrix, BWT, forgetting,
intervals), :mod:`.multiagent` (consensus rules under an adversary), :mod:`.run` (orchestration, CLI).
See docs/continual.md.
"""
