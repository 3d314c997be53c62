"""``aml-sandbox``: the local stack (bootstrap, images, up, down, status)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from sandbox import console
from sandbox.config import Settings, ensure_account_key
from sandbox.errors import SandboxError


def _cmd_bootstrap(args: argparse.Namespace, settings: Settings) -> int:
    from sandbox.bootstrap import ensure_docker

    report = ensure_docker()
    console.step("Docker is ready" + ("" if report.changed else " (nothing changed)"))
    return 0


def _build_images(settings: Settings, *, allow_pull: bool, include_environments: bool) -> list:
    from sandbox import stack
    from sandbox.docker_engine import DockerEngine
    from sandbox.images import ImageBuilder

    engine = DockerEngine()
    builder = ImageBuilder(engine, settings, allow_pull=allow_pull)
    recipes = list(stack.recipes())
    if include_environments:
        recipes += _environment_recipes()
    return [builder.resolve(recipe) for recipe in recipes]


def _environment_recipes() -> list:
    from sandbox.images import curated_recipes

    return curated_recipes()


def _cmd_images(args: argparse.Namespace, settings: Settings) -> int:
    from sandbox import stack
    from sandbox.docker_engine import DockerEngine
    from sandbox.images import image_summary

    if args.images_command == "build":
        console.step("Resolving images (present -> pull -> offline build)")
        resolved = _build_images(settings, allow_pull=not args.no_pull, include_environments=True)
        built = [r for r in resolved if r.how == "built"]
        console.step(f"{len(resolved)} images ready; built {len(built)}, pulled "
                     f"{sum(r.how == 'pulled' for r in resolved)}, already present "
                     f"{sum(r.how == 'present' for r in resolved)}")
        for r in resolved:
            console.detail(f"{r.recipe:<10} {r.reference:<60} {r.how}")
        return 0
    engine = DockerEngine()
    for name, reference, present in image_summary(engine, stack.recipes() + _environment_recipes()):
        print(f"{name:<10} {reference:<60} {'present' if present else 'missing'}")
    return 0


def _cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from sandbox import azurite, proxy
    from sandbox.bootstrap import ensure_docker
    from sandbox.proxy.ca import StackCA
    from sandbox.service.auth import ensure_token
    from sandbox.service.client import ServiceClient
    from sandbox.stack import Stack

    ensure_token(settings.home)  # first: an empty or short token is refused before anything starts
    StackCA.ensure(settings.home)  # made by the user, not by the root container that serves it
    ensure_account_key(settings.home)  # Azurite's only key: a run cannot sign its own SAS with the published one
    ensure_docker()
    console.step("Resolving the stack's images")
    _build_images(settings, allow_pull=not args.no_pull, include_environments=False)
    settings.write_stack_file()
    console.step(f"docker compose up (project {settings.project})")
    Stack(settings).up()
    console.step("Waiting for Azurite to answer a real request")
    azurite.wait_until_ready(settings)
    console.step("Waiting for the workspace service")
    ServiceClient(settings).wait_until_ready()
    console.step("Waiting for the https proxy")
    proxy.wait_until_ready(settings)
    console.step("The local stack is up")
    _print_endpoints(settings, show_secrets=args.show_secrets)
    return 0


def _print_endpoints(settings: Settings, *, show_secrets: bool) -> None:
    console.detail(f"blob endpoint:     {settings.blob_endpoint}")
    console.detail(
        "connection string: "
        + (settings.connection_string if show_secrets else settings.masked_connection_string)
    )
    console.detail(f"workspace service: {settings.service_url}  (runs: {settings.service_url}/experiments)")
    console.detail(f"https proxy:       http://{settings.bind_host}:{settings.proxy_port}  "
                   f"(CA bundle: {settings.home / 'proxy' / 'ca-bundle.pem'})")
    console.detail(f"state folder:      {settings.home}")


def _cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    from sandbox.container_spec import PROJECT_LABEL, RUN_ID_LABEL
    from sandbox.docker_engine import DockerEngine
    from sandbox.stack import Stack

    console.step("docker compose down" + (" --volumes (all data and run history are deleted)"
                                          if args.volumes else " (data kept in the named volumes)"))
    Stack(settings).down(volumes=args.volumes)
    engine = DockerEngine()
    runs = [c.labels.get(RUN_ID_LABEL) for c in engine.client.containers.list(
        filters={"label": f"{PROJECT_LABEL}={settings.project}"})]
    if args.volumes:
        removed = engine.remove_containers({PROJECT_LABEL: settings.project})
        if removed:
            console.detail(f"removed {removed} run containers (their run history is gone)")
    elif runs:
        console.detail(f"{len(runs)} runs keep going in their containers ({', '.join(runs)}); "
                       "'aml-sandbox up' re-attaches to them")
    console.step("The local stack is stopped")
    return 0


def _cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from sandbox import azurite, stack
    from sandbox.bootstrap import docker_server_version
    from sandbox.docker_engine import DockerEngine
    from sandbox.images import image_summary

    server = docker_server_version()
    print(f"docker engine: {server or 'not answering (run aml-sandbox bootstrap)'}")
    if not server:
        return 1
    states = {s.service: s for s in stack.Stack(settings).status()}
    print(f"stack {settings.project}:")
    for service in stack.Stack(settings).services():
        state = states.get(service)
        if state is None:
            print(f"  {service:<12} not running")
        else:
            health = f" ({state.health})" if state.health else ""
            print(f"  {service:<12} {state.state}{health}  {state.ports}")
    print("images:")
    for name, reference, present in image_summary(DockerEngine(), stack.recipes() + _environment_recipes()):
        print(f"  {name:<12} {reference:<60} {'present' if present else 'missing'}")
    reason = azurite.probe(settings, timeout=2.0)
    print(f"azurite: {'answers' if reason is None else 'does not answer'} at {settings.blob_endpoint}")
    if args.show_secrets:
        print(f"connection string: {settings.connection_string}")
    return 0


def _cmd_data(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from sandbox import cifar10

    out = args.out.absolute()
    start = time.monotonic()
    if args.real:
        console.step(f"Downloading the real CIFAR-10 into {out}")
        paths = cifar10.fetch_real(out)
    else:
        size = "full size" if args.images is None else f"{args.images} training images"
        console.step(f"Generating CIFAR-10 ({size}, seed {args.seed}) into {out}")
        paths = cifar10.generate(out, images=args.images, seed=args.seed, progress=console.detail)
    total = sum(p.stat().st_size for p in paths)
    console.step(f"{len(paths)} files, {total / 1e6:.1f} MB in {time.monotonic() - start:.1f} s")
    return 0


def _client(settings: Settings):
    from sandbox.service.client import ServiceClient

    return ServiceClient(settings)


def _cmd_runs(args: argparse.Namespace, settings: Settings) -> int:
    import json

    client = _client(settings)
    action = args.runs_command
    if action == "list":
        runs = client.list_runs(args.experiment)
        if not runs:
            print("no runs" + (f" in experiment {args.experiment}" if args.experiment else ""))
            return 0
        print(f"{'RUN ID':<52} {'STATUS':<16} {'TARGET':<12} CREATED (UTC)")
        for run in runs:
            print(f"{run['runId']:<52} {run['status']:<16} {run['target']:<12} {run['createdUtc'][:19]}")
        return 0
    if action == "show":
        run = client.get_run(args.run_id)
        definition = run.pop("definition")
        run["metrics"] = client.metrics(args.run_id)["metrics"]
        run["files"] = client.files(args.run_id)
        run["arguments"] = definition.get("arguments")
        run["url"] = f"{settings.service_url}/runs/{args.run_id}"
        print(json.dumps(run, indent=2))
        return 0 if run["status"] != "Failed" else 1
    if action == "cancel":
        run = client.cancel(args.run_id)
        print(f"{args.run_id}: {run['status']}")
        return 0
    return _logs(client, args.run_id, args.file, args.follow)


def _cmd_logs(args: argparse.Namespace, settings: Settings) -> int:
    return _logs(_client(settings), args.run_id, args.file, args.follow)


def _logs(client, run_id: str, name: str, follow: bool) -> int:
    import time

    from sandbox.errors import ServiceError
    from sandbox.run_definition import RunStatus

    offset = 0
    status = client.get_run(run_id)["status"]
    while True:
        try:
            data, offset, status = client.read_file(run_id, name, offset)
        except ServiceError as exc:
            if exc.status_code != 404:
                raise
            data = b""
            status = client.get_run(run_id)["status"]
        if data:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        if not follow or (status and RunStatus(status).is_terminal and not data):
            break
        time.sleep(1.0)
    if follow:
        print(f"\n{run_id}: {status}")
    return 0 if status != "Failed" else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aml-sandbox", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    sub.add_parser("bootstrap", help="install and start Docker and docker compose v2 if needed").set_defaults(
        func=_cmd_bootstrap)

    images = sub.add_parser("images", help="resolve the images the stack and the runs need")
    images_sub = images.add_subparsers(dest="images_command", required=True, metavar="action")
    build = images_sub.add_parser("build", help="present -> pull -> build offline, for every image")
    build.add_argument("--no-pull", action="store_true", help="do not try registries; build offline")
    images_sub.add_parser("list", help="show which images exist")
    images.set_defaults(func=_cmd_images)

    up = sub.add_parser("up", help="bootstrap Docker, resolve images, start the stack, wait until ready")
    up.add_argument("--no-pull", action="store_true", help="do not try registries; build offline")
    up.add_argument("--show-secrets", action="store_true", help="print the full connection string")
    up.set_defaults(func=_cmd_up)

    down = sub.add_parser("down", help="stop the stack (data stays unless --volumes)")
    down.add_argument("-v", "--volumes", action="store_true", help="also delete the data volumes")
    down.set_defaults(func=_cmd_down)

    data = sub.add_parser("data", help="write CIFAR-10 in torchvision's on-disk layout (offline)")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="dataset")
    cifar = data_sub.add_parser("cifar10", help="generated (default) or the real data set")
    cifar.add_argument("--out", type=Path, default=Path("data"), help="output folder (default: ./data)")
    cifar.add_argument("--images", type=int, default=None, help="training images (default: the full 50,000)")
    cifar.add_argument("--seed", type=int, default=0)
    cifar.add_argument("--real", action="store_true", help="download the real data set where the network allows")
    data.set_defaults(func=_cmd_data)

    runs = sub.add_parser("runs", help="runs in the local workspace: list, show, logs, cancel")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True, metavar="action")
    runs_list = runs_sub.add_parser("list", help="runs, newest first")
    runs_list.add_argument("--experiment", help="only this experiment's runs")
    runs_sub.add_parser("show", help="a run's status, timings, metrics, files").add_argument("run_id")
    runs_sub.add_parser("cancel", help="cancel a run").add_argument("run_id")
    for parser_ in (runs_sub.add_parser("logs", help="print a run's driver log"),
                    sub.add_parser("logs", help="print a run's driver log (same as 'runs logs')")):
        parser_.add_argument("run_id")
        parser_.add_argument("--follow", "-f", action="store_true", help="keep printing until the run ends")
        parser_.add_argument("--file", default="azureml-logs/70_driver_log.txt", help="which run file")
        parser_.set_defaults(func=_cmd_logs)
    runs.set_defaults(func=_cmd_runs)

    status = sub.add_parser("status", help="each service's state and which images exist")
    status.add_argument("--show-secrets", action="store_true", help="print the full connection string")
    status.set_defaults(func=_cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        return int(args.func(args, settings))
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
