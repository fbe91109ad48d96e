"""The jobs under the public API: extract, train, spotcheck, stream, predict, finetune, demo.

They live in this package, not beside ``transferkit/__init__.py``: a submodule named like an API
function (``transferkit.train``) would replace the function on the package once imported.
"""
