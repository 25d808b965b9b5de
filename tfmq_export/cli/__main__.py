"""``python -m tfmq_export.cli``: the ``tfmq-export`` command line as a module, which is what
``torchrun --nproc-per-node N -m tfmq_export.cli calibrate ...`` starts on every rank."""

from tfmq_export.cli.app import main

main()
