"""The flags of a quick command-line run (synthetic data, 7 workers, the MNIST MLP), shared by
the command-line tests; each adds what it tests."""

QUICK = (
    "--dataset synthetic --model simples-full --nb-workers 7 --nb-decl-byz 2 --gar median "
    "--batch-size 8 --nb-steps 6 --no-progress"
).split()
