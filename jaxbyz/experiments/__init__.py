"""Sweeps of simulated runs: grids and presets (``grid``), batched resumable execution
(``runner``), the paper's headline statistics and plots (``report``), and the command line
``python -m jaxbyz.experiments.sweep`` (``sweep``). See El-Mhamdi, Guerraoui & Rouault,
"Distributed Momentum for Byzantine-resilient SGD" (ICLR 2021), Section 4.
"""
