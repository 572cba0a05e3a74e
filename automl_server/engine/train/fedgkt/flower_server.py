"""FedGKT's Flower ServerApp: the server side of every round, in the process the SuperLink starts.

It reads the run's ``job.json`` (run config ``job``), waits for the clients'
SuperNodes, learns which node holds which client (``query.identify``; node ids
change when a run restarts, client indices do not), then per round: sends
``train`` with the previous round's z_s, trains the server model on the
uploads, computes z_s, checkpoints, and appends the round's row to
``rounds.jsonl``. A run that finds a checkpoint resumes after its round. Once
the train stage writes ``stop.json`` (the job's time budget is spent), no
further round starts: the edge models are exported after the last finished one.
"""
from __future__ import annotations

import io
import json
import time
import traceback
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from automl_server.engine.train.fedgkt import payload
from automl_server.engine.train.fedgkt.client import RoundSettings
from automl_server.engine.train.fedgkt.flower_client import blob_record, record_blob, record_int
from automl_server.engine.train.fedgkt.models import ServerModel
from automl_server.engine.train.fedgkt.server import ServerTrainer
from automl_server.engine.train.fedgkt.workspace import Workspace, append_json_line, atomic_save, write_json
from search_spaces import Arch

server_app = ServerApp()


class ClientFailed(RuntimeError):
    pass


def _exchange(grid: Grid, contents: dict[int, RecordDict], message_type: str, group: str,
              node_of: dict[int, int]) -> dict[int, RecordDict]:
    """Send one message per client and wait for every reply; a client's error is raised, not skipped."""
    messages = [grid.create_message(content, message_type, node_of[client], group)
                for client, content in contents.items()]
    replies = list(grid.send_and_receive(messages))
    client_of = {node: client for client, node in node_of.items()}
    received: dict[int, RecordDict] = {}
    for reply in replies:
        client = client_of[reply.metadata.src_node_id]
        if reply.has_error():
            raise ClientFailed(f"client {client} failed in {message_type}: {reply.error.reason}")
        received[client] = reply.content
    missing = sorted(set(contents) - set(received))
    if missing:
        raise ClientFailed(f"no reply from clients {missing} to {message_type}")
    return received


def _wait_for_nodes(grid: Grid, count: int, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes
        if time.monotonic() > deadline:
            raise ClientFailed(f"{len(nodes)} of {count} SuperNodes connected within {timeout_s:.0f} s")
        time.sleep(0.2)


def _identify(grid: Grid, nodes: Iterable[int], clients: int) -> dict[int, int]:
    messages = [grid.create_message(RecordDict(), "query.identify", node, "identify") for node in nodes]
    node_of: dict[int, int] = {}
    for reply in grid.send_and_receive(messages):
        if reply.has_error():
            raise ClientFailed(f"node {reply.metadata.src_node_id} failed to identify: {reply.error.reason}")
        node_of[record_int(reply.content["identity"], "client")] = reply.metadata.src_node_id
    if sorted(node_of) != list(range(clients)):
        raise ClientFailed(f"SuperNodes hold clients {sorted(node_of)}; the job has clients 0..{clients - 1}")
    return node_of


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    workspace = Workspace(Path(str(context.run_config["work-dir"])))
    try:
        run_rounds(grid, workspace)
    except BaseException:
        workspace.error.write_text(traceback.format_exc())
        raise


def run_rounds(grid: Grid, workspace: Workspace) -> None:
    job = workspace.read_job()
    torch.set_num_threads(int(job["threads"]))
    settings = RoundSettings(**job["settings"])
    arch, cut, clients, rounds = Arch.from_dict(job["arch"]), int(job["cut"]), int(job["clients"]), int(job["rounds"])
    torch.manual_seed(settings.seed + 1)
    width_mult, depth_mult = job["server_size"]
    trainer = ServerTrainer(ServerModel(arch, cut, width_mult, depth_mult), settings)
    finished, history, pending = 0, [], {}  # pending: client -> z_s blob to send with the next message
    if workspace.server_checkpoint.exists():
        state = torch.load(workspace.server_checkpoint, weights_only=False)
        trainer.load_state_dict(state["trainer"])
        finished, history, pending = state["round"], state["history"], state["pending"]
    # rounds.jsonl holds exactly the checkpointed rounds (a crash may have left a row of an unsaved round)
    workspace.rounds.write_text("".join(json.dumps(row) + "\n" for row in history))
    node_of = _identify(grid, _wait_for_nodes(grid, clients, float(job["node_wait_s"])), clients)

    for round_index in range(finished + 1, rounds + 1):
        if workspace.stop.exists():
            break
        started = time.monotonic()
        contents = {}
        for client in range(clients):
            config = ConfigRecord({**asdict(settings), "round": round_index, "resume_from": round_index - 1,
                                   "threads": int(job["threads"])})
            records: dict[str, Any] = {"config": config}
            if client in pending:
                records["reply"] = blob_record(pending[client])
            contents[client] = RecordDict(records)
        received = _exchange(grid, contents, "train", str(round_index), node_of)
        uploads, client_rows = {}, []
        for client in sorted(received):
            blob = record_blob(received[client].array_records["upload"])
            uploads[client] = payload.decode(blob, payload.UPLOAD_FIELDS)
            metrics = dict(received[client]["metrics"])
            client_rows.append({"client": client, "accuracy": metrics["accuracy"] if metrics["test_samples"] else None,
                                "test_samples": record_int(metrics, "test_samples"),
                                "train_loss": metrics["train_loss"],
                                "bytes_up": len(blob), "bytes_up_sent": record_int(metrics, "bytes_up"),
                                "bytes_down_received": record_int(metrics, "bytes_down_received"),
                                "bytes_down_sent": len(pending.get(client, b"")), "wall_s": metrics["wall_s"]})
        server_started = time.monotonic()
        server_loss = trainer.train(uploads, round_index)
        pending = {client: payload.encode(reply) for client, reply in trainer.replies(uploads).items()}
        for row in client_rows:
            # z_s computed this round, delivered with the next round's message (or the export query)
            row["bytes_down"] = len(pending[row["client"]])
        history.append({"round": round_index, "clients": client_rows, "server_accuracy": trainer.test_accuracy(uploads),
                        "server_loss": server_loss, "server_wall_s": time.monotonic() - server_started,
                        "round_wall_s": time.monotonic() - started,
                        "bytes_up": sum(r["bytes_up"] for r in client_rows),
                        "bytes_down": sum(r["bytes_down"] for r in client_rows)})
        atomic_save({"trainer": trainer.state_dict(), "round": round_index, "history": history, "pending": pending},
                    workspace.server_checkpoint)
        append_json_line(workspace.rounds, history[-1])

    last = len(history)  # the rounds planned, or fewer when the budget stopped the run
    contents = {client: RecordDict({"config": ConfigRecord({"round": last}),
                                    **({"reply": blob_record(pending[client])} if client in pending else {})})
                for client in range(clients)}
    received = _exchange(grid, contents, "query.export", "export", node_of)
    for client, content in received.items():
        state = torch.load(io.BytesIO(record_blob(content.array_records["edge"])), weights_only=True)
        atomic_save(state, workspace.final_edge(client))
    atomic_save(trainer.model.state_dict(), workspace.root / "final" / "server.pt")
    write_json(workspace.done, {"rounds": last, "planned": rounds})
