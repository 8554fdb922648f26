"""The commands of the `pdl-trl` command line, one module each; `pdl-trl COMMAND ARGS` calls the module's `run(ARGS)`.

Each command is thin: it parses its arguments, calls the library (`pdl_trl`, `pdl_trl.evaluation`) and prints or
writes the result. Every module also runs as `python -m pdl_trl.scripts.MODULE`; the training scripts (`sft`,
`count`) run under any launcher that way (`accelerate launch -m`, `torchrun -m`), like the scripts in `trl/scripts`.
"""
