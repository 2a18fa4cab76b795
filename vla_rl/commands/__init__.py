"""One module per `vla-rl` subcommand, named as typed (fit-verifier -> fit_verifier.py), each
with `main(args) -> exit status`."""
