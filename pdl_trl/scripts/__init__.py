"""Entry points of the `pdl-trl` command line, one module per subcommand.

Each training script can be launched as a module by any launcher (`python -m`, `accelerate launch -m`,
`torchrun -m`), like the scripts in `trl/scripts`.
"""
