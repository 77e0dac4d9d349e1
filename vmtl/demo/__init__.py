"""`vmtl demo`: the whole path in one command (arguments in ``cli``, the steps in ``run``, the training
config in ``config``)."""
