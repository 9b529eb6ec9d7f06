"""Wall time of one FedAvg workload in mas_lightning and in Flower's simulation engine (Ray backend).

Both sides train the same tiny ``MultiTaskModel`` on the same mini-Taskonomy clients: the same number of
clients, clients per round, local steps, batch size and rounds, SGD (lr 0.1, momentum 0.9, wd 1e-4, poly
decay per round), random horizontal flips, and a FedAvg weighted by client data size. Flower gets no
evaluation at all; mas_lightning validates only after the last round (``eval_every = rounds``) and tests
once, on small server-side sets, and also checkpoints every round: that is what it costs to use it.
Each side's wall time runs from its entry point to its return, start-up included (Ray, Fabric, data).

Needs the ``bench`` extra (``pip install "flwr[simulation]"``)::

    python experiments/bench_flower.py                       # sdnkt, 64 px, 8 clients, 4 per round, 10 rounds
    python experiments/bench_flower.py --rounds 3 --only flower
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def data_source(args: argparse.Namespace) -> Any:
    """The mini-Taskonomy source both sides read (rendered once, then from the disk cache)."""
    from mas_lightning.data.minitaskonomy import MiniTaskonomy

    return MiniTaskonomy(clients=args.clients, images_per_client=args.images_per_client,
                         eval_images_per_building=args.eval_images, resolution=args.resolution)


def run_mas_lightning(args: argparse.Namespace, out: Path) -> tuple[float, int]:
    """Wall seconds and samples trained of the workload as a mas_lightning all-in-one fit run."""
    from mas_lightning.cli import main

    torch.set_num_threads(args.threads)
    data = {"class_path": "mas_lightning.data.minitaskonomy.MiniTaskonomy",
            "init_args": {"clients": args.clients, "images_per_client": args.images_per_client,
                          "eval_images_per_building": args.eval_images, "resolution": args.resolution}}
    argv = ["fit", f"--data={json.dumps(data)}",
            f"--tasks={args.tasks}", f"--rounds={args.rounds}", "--method=mas_lightning.methods.AllInOne",
            f"--engine.clients_per_round={args.per_round}", f"--engine.batch_size={args.batch}",
            f"--engine.local_steps={args.local_steps}", f"--engine.eval_every={args.rounds}",
            "--accelerator=cpu", f"--out={out}", "--name=bench", f"--seed={args.seed}"]
    started = time.perf_counter()
    summary = main(argv)
    return time.perf_counter() - started, int(summary["samples_trained"])


def run_flower(args: argparse.Namespace) -> tuple[float, int]:
    """Wall seconds and samples trained of the workload in Flower's simulation engine."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from mas_lightning.data.base import hflip, make_loader
    from mas_lightning.model import MultiTaskModel

    settings = vars(args).copy()
    cached: dict[str, Any] = {}  # per Ray actor: data and model built once, reused across rounds

    def client_state(partition: int) -> tuple[Any, MultiTaskModel]:
        if "data" not in cached:
            torch.set_num_threads(settings["threads_per_client"])
            cached["data"] = data_source(argparse.Namespace(**settings)).setup(_task_names(settings["tasks"]))
            cached["model"] = MultiTaskModel(settings["tasks"])
        return cached["data"].clients[partition], cached["model"]

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        dataset, model = client_state(int(context.node_config["partition-id"]))
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        lr = 0.1 * float(msg.content["config"]["lr_factor"])
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
        model.train()
        gen = torch.Generator().manual_seed(int(msg.content["config"]["round"]))
        loader = make_loader(dataset, settings["batch"], shuffle=True, generator=gen,
                             drop_last=len(dataset) >= settings["batch"])
        samples, steps = 0, 0
        while steps < settings["local_steps"]:
            for batch in loader:
                flip = torch.rand(len(batch["rgb"]), generator=gen) < 0.5
                batch = hflip(batch, flip)
                loss = model.total_loss(model.task_losses(model(batch["rgb"]), batch))
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                samples += len(batch["rgb"])
                steps += 1
                if steps >= settings["local_steps"]:
                    break
        reply = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                            "metrics": MetricRecord({"num-examples": len(dataset), "samples": samples})})
        return Message(content=reply, reply_to=msg)

    trained: list[int] = []
    server_app = ServerApp()

    @server_app.main()
    def server(grid: Grid, context: Context) -> None:
        strategy = PolyFedAvg(settings["rounds"], fraction_train=settings["per_round"] / settings["clients"],
                              fraction_evaluate=0.0, min_train_nodes=settings["per_round"],
                              min_available_nodes=settings["clients"])
        torch.manual_seed(settings["seed"])
        initial = ArrayRecord(MultiTaskModel(settings["tasks"]).state_dict())
        result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=settings["rounds"],
                                train_config=ConfigRecord({"lr_factor": 1.0, "round": 0}))
        trained.append(int(sum(m["samples"] for m in result.train_metrics_clientapp.values())))

    class PolyFedAvg(FedAvg):
        """FedAvg that sends each round's poly learning-rate factor, as mas_lightning's engine applies it."""

        def __init__(self, rounds: int, **kwargs: Any) -> None:
            super().__init__(train_metrics_aggr_fn=_sum_metrics, **kwargs)
            self.rounds = rounds

        def configure_train(self, server_round: int, arrays: Any, config: Any, grid: Any) -> Any:
            config["lr_factor"] = (1.0 - (server_round - 1) / self.rounds) ** 0.9
            config["round"] = server_round
            return super().configure_train(server_round, arrays, config, grid)

    backend = {"client_resources": {"num_cpus": args.cpus_per_client, "num_gpus": 0.0},
               "init_args": {"num_cpus": args.threads, "logging_level": logging.ERROR, "log_to_driver": False}}
    started = time.perf_counter()
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=args.clients,
                   backend_config=backend)
    return time.perf_counter() - started, trained[0] if trained else -1


def _sum_metrics(records: list[Any], weight_key: str) -> Any:
    from flwr.app import MetricRecord

    return MetricRecord({"samples": sum(r["metrics"]["samples"] for r in records)})


def _task_names(tasks: str) -> tuple[str, ...]:
    from mas_lightning.tasks import parse_tasks

    return parse_tasks(tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="sdnkt")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--images-per-client", type=int, default=64)
    parser.add_argument("--eval-images", type=int, default=8, help="images per val/test building (mas_lightning)")
    parser.add_argument("--per-round", type=int, default=4, help="clients sampled per round")
    parser.add_argument("--local-steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU cores either side may use")
    parser.add_argument("--cpus-per-client", type=int, default=1, help="Ray CPUs per Flower client actor")
    parser.add_argument("--only", choices=("mas", "flower"), default=None)
    args = parser.parse_args()
    args.threads_per_client = args.cpus_per_client
    data_source(args).setup(_task_names(args.tasks))  # render into the cache first: neither side pays for it
    print(f"workload: tasks {args.tasks}, {args.resolution} px, {args.clients} clients, {args.per_round} per round, "
          f"{args.local_steps} local steps of {args.batch}, {args.rounds} rounds; {args.threads} CPU threads")
    times: dict[str, float] = {}
    if args.only in (None, "mas"):
        with tempfile.TemporaryDirectory() as out:
            times["mas_lightning"], samples = run_mas_lightning(args, Path(out))
        print(f"mas_lightning: {times['mas_lightning']:.1f} s wall, {samples} samples trained")
    if args.only in (None, "flower"):
        times["flower"], samples = run_flower(args)
        print(f"flower (simulation, ray): {times['flower']:.1f} s wall, {samples} samples trained")
    if len(times) == 2:
        print(f"ratio flower / mas_lightning: {times['flower'] / times['mas_lightning']:.2f}")


if __name__ == "__main__":
    main()
