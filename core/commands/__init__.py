"""Click commands of the jobs, one module each, added to the root group by ``transferkit.cli``.

Each module defines ``register(cli)`` adding its commands; modules never import TensorFlow at
module level (``--help`` must stay fast).
"""

from __future__ import annotations

COMMAND_MODULES: tuple[str, ...] = (
    "transferkit.commands.extract",
    "transferkit.commands.train",
    "transferkit.commands.spotcheck",
    "transferkit.commands.stream",
    "transferkit.commands.predict",
    "transferkit.commands.demo",
    "transferkit.commands.finetune",
    "transferkit.commands.lr_find",
    "transferkit.commands.export",
    "transferkit.commands.serve",
    "transferkit.commands.audit",
)
