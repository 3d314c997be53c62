"""``aml-sandbox``: the local stack (bootstrap, images, up, down, status)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sandbox import console
from sandbox.config import Settings
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
    from sandbox import azurite
    from sandbox.bootstrap import ensure_docker
    from sandbox.service.auth import ensure_token
    from sandbox.service.client import ServiceClient
    from sandbox.stack import Stack

    ensure_docker()
    console.step("Resolving the stack's images")
    _build_images(settings, allow_pull=not args.no_pull, include_environments=False)
    settings.write_stack_file()
    ensure_token(settings.home)
    console.step(f"docker compose up (project {settings.project})")
    Stack(settings).up()
    console.step("Waiting for Azurite to answer a real request")
    azurite.wait_until_ready(settings)
    console.step("Waiting for the workspace service")
    ServiceClient(settings).wait_until_ready()
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
    console.detail(f"state folder:      {settings.home}")


def _cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    from sandbox.stack import Stack

    console.step("docker compose down" + (" --volumes (all data and run history are deleted)"
                                          if args.volumes else " (data kept in the named volumes)"))
    Stack(settings).down(volumes=args.volumes)
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
