"""FedGKT (He et al., NeurIPS 2020): the searched network as the edge model of group knowledge transfer.

- ``models``: the edge model cut from the searched network, the server model.
- ``losses``: KD_T and the client's and server's losses.
- ``partition``: seeded IID and Dirichlet partitions, class histograms.
- ``client`` / ``server``: one round's work on each side (transport-free).
- ``payload``: the bytes exchanged.
- ``flower_client`` / ``flower_server``: the Flower ClientApp and ServerApp.
- ``deployment``: SuperLink + SuperNodes + ``flwr run`` as child processes.
- ``runner``: shards, files and the rounds as the train stage sees them.
- ``fedavg``: the FedAvg baselines. ``inprocess``: the rounds in one process (tests only).
- ``pipeline``: settings and registration (``fedgkt``).

Importing the package does not import Flower; ``pipeline`` (and the apps) do.
"""
