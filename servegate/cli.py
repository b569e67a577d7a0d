"""The `servegate` command. It reaches a running gateway only through its
management API (`--url` / SERVEGATE_URL, `--token` / SERVEGATE_TOKEN), except
`serve`, which starts the gateway."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import click
import orjson
import yaml

from deploy.errors import ControlPlaneError, SpecError
from deploy.records import FINAL_JOB_STATES, JobState
from deploy.specs import (
    SPEC_KINDS,
    BatchDeploymentSpec,
    BatchEndpointSpec,
    EndpointSpec,
    ModelRef,
    MonitorSpec,
    OnlineDeploymentSpec,
    SpecT,
    json_schema,
    parse_spec,
    read_yaml,
)
from servegate.client import DEFAULT_URL, AdminClient, ClientError, TlsClient, find_admin_token
from servegate.output import FORMATS, render, select


def _default_home() -> Path:
    from gateway.settings import default_home

    return default_home()


def _setting(name: str) -> Any:
    """A global option (-o, --query, --verbose, --debug), given before or after the
    command's name."""
    return click.get_current_context().find_root().meta.get(f"servegate.{name}")


def _print(doc: Any, columns: tuple[str, ...] = ()) -> None:
    """An answer, picked by --query and rendered by -o (JSON by default); `columns`: what
    `-o table` shows of each item when --query picks nothing."""
    if doc is not None:
        query = _setting("query")
        click.echo(
            render(select(doc, query), _setting("output") or "json", () if query else columns)
        )


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value:
        ctx.find_root().meta[f"servegate.{param.name}"] = value
    return value


def _home_after_command(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """`servegate serve --home DIR`: the home given after the command's name, as before."""
    if value is not None and isinstance(ctx.find_root().obj, Ctx):
        ctx.find_root().obj.home = Path(value)
    return value


def _global_options() -> list[click.Option]:
    """az's options, taken by every command."""
    return [
        click.Option(
            ["--home"],
            type=click.Path(file_okay=False, path_type=Path),
            expose_value=False,
            callback=_home_after_command,
            help="servegate's home folder (as `servegate --home DIR ...`; default "
            "$SERVEGATE_HOME, else ~/.servegate).",
        ),
        click.Option(
            ["-o", "--output"],
            type=click.Choice(FORMATS),
            expose_value=False,
            callback=_remember,
            help="Answer format (default json); tsv prints bare values for scripts.",
        ),
        click.Option(
            ["--query"],
            expose_value=False,
            callback=_remember,
            help="JMESPath expression picking part of the answer, e.g. primaryKey.",
        ),
        click.Option(
            ["--verbose"],
            is_flag=True,
            expose_value=False,
            callback=_remember,
            help="Print each API call (status, request id, time) on stderr.",
        ),
        click.Option(
            ["--debug"],
            is_flag=True,
            expose_value=False,
            callback=_remember,
            help="--verbose, with the answers' headers.",
        ),
    ]


class AzCommand(click.Command):
    """A command that also takes the global options (-o, --query, --verbose, --debug)
    after its name, as `az ml ...` commands do."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(_global_options())


def _print_warned(doc: dict[str, Any]) -> None:
    """An answer, with its `warnings` also on stderr (where a shell user sees them)."""
    for warning in doc.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)
    _print(doc)


def store_options(command: Any) -> Any:
    """`--store` and `--artifacts` for the commands that open the control plane. They go
    through the environment so the processes these start (batch runners) see them too."""

    def remember(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        from deploy.home import ARTIFACTS_ENV
        from deploy.store import STORE_ENV

        if value:
            os.environ[STORE_ENV if param.name == "store" else ARTIFACTS_ENV] = value
        return value

    command = click.option(
        "--artifacts",
        envvar="SERVEGATE_ARTIFACTS",
        default=None,
        expose_value=False,
        callback=remember,
        help="Folder for model files and scoring code; several gateways share one "
        "(a shared filesystem) [default: $SERVEGATE_HOME].",
    )(command)
    return click.option(
        "--store",
        envvar="SERVEGATE_STORE",
        default=None,
        expose_value=False,
        callback=remember,
        help="The control plane's store: sqlite:///path or postgresql://user@host/db "
        "[default: sqlite:///$SERVEGATE_HOME/store.db].",
    )(command)


class Ctx:
    """Connection options shared by the subcommands, resolved lazily."""

    def __init__(
        self, url: str, token: str | None, home: Path, tls: TlsClient | None = None
    ) -> None:
        self.url, self.token, self.home = url, token, home
        self.tls = tls or TlsClient()
        self._client: AdminClient | None = None

    @property
    def client(self) -> AdminClient:
        if self._client is None:
            debug = bool(_setting("debug"))
            trace = (
                (lambda line: click.echo(line, err=True)) if debug or _setting("verbose") else None
            )
            self._client = AdminClient(
                self.url,
                find_admin_token(self.token, self.home),
                trace=trace,
                debug=debug,
                tls=self.tls,
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


pass_ctx = click.make_pass_decorator(Ctx)


class ServegateGroup(click.Group):
    """Turns our errors into a message on stderr and a non-zero exit. Its commands take
    the global options; its groups are ServegateGroups."""

    command_class = AzCommand
    group_class = type

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ClientError, ControlPlaneError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=ServegateGroup)
@click.version_option(package_name="servegate", message="servegate %(version)s")
@click.option(
    "--url",
    envvar="SERVEGATE_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="The gateway's URL.",
)
@click.option(
    "--token",
    envvar="SERVEGATE_TOKEN",
    default=None,
    help="Admin token (default: read from $SERVEGATE_HOME/admin_token).",
)
@click.option(
    "--home",
    envvar="SERVEGATE_HOME",
    type=click.Path(path_type=Path),
    default=None,
    help="servegate's home folder (default ~/.servegate).",
)
@click.option(
    "--ca-bundle",
    envvar="SERVEGATE_CA_BUNDLE",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Verify an https:// gateway against these CA certificates (PEM) instead of the system's.",
)
@click.option(
    "--client-cert",
    envvar="SERVEGATE_CLIENT_CERT",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Mutual TLS: this client's certificate (PEM; its key too, or --client-key).",
)
@click.option(
    "--client-key",
    envvar="SERVEGATE_CLIENT_KEY",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
)
@click.pass_context
def main(
    ctx: click.Context,
    url: str,
    token: str | None,
    home: Path | None,
    ca_bundle: str | None,
    client_cert: str | None,
    client_key: str | None,
) -> None:
    """servegate: model serving gateway for real-time and batch inference.

    Every command takes -o/--output json|yaml|table|tsv, --query (JMESPath), --verbose
    and --debug, before or after its name."""
    tls = TlsClient(ca_bundle, client_cert, client_key)
    ctx.obj = Ctx(url, token, home or _default_home(), tls)
    ctx.call_on_close(ctx.obj.close)


# (--home is the group's own option: only the commands take it a second time.)
main.params.extend(o for o in _global_options() if o.name != "home")


# -- schema -----------------------------------------------------------------------
@main.command("schema")
@click.argument("kind", type=click.Choice(list(SPEC_KINDS)))
@click.option(
    "--write",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write <kind>.schema.json into this folder instead of printing it.",
)
def schema(kind: str, folder: Path | None) -> None:
    """The JSON Schema of a YAML kind, for editors: point a file's `$schema` at it."""
    text = json.dumps(json_schema(kind), indent=2) + "\n"
    if folder is None:
        click.echo(text, nl=False)
        return
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{kind}.schema.json").write_text(text)


# -- serve ------------------------------------------------------------------------
@main.command()
@click.option("--host", envvar="SERVEGATE_HOST", default="127.0.0.1", show_default=True)
@click.option("--port", envvar="SERVEGATE_PORT", type=int, default=8000, show_default=True)
@click.option(
    "--demo",
    is_flag=True,
    envvar="SERVEGATE_DEMO",
    help="Create the demo endpoint (blue 100%, green 0%) and print a curl command.",
)
@click.option(
    "--max-request-body-bytes",
    envvar="SERVEGATE_MAX_REQUEST_BODY_BYTES",
    type=int,
    default=100 * 1024 * 1024,
    show_default=True,
)
@click.option(
    "--graceful-shutdown-s",
    envvar="SERVEGATE_GRACEFUL_SHUTDOWN_S",
    type=float,
    default=30.0,
    show_default=True,
)
@click.option(
    "--max-header-bytes",
    envvar="SERVEGATE_MAX_HEADER_BYTES",
    type=click.IntRange(min=1024),
    default=64 * 1024,
    show_default=True,
    help="Request line plus headers above this are answered 431.",
)
@click.option(
    "--header-timeout-s",
    envvar="SERVEGATE_HEADER_TIMEOUT_S",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="A connection must send a request's headers within this, else 408 and closed.",
)
@click.option(
    "--max-connections",
    envvar="SERVEGATE_MAX_CONNECTIONS",
    type=click.IntRange(min=0),
    default=0,
    help="Open connections above this are answered 503 [default: 0 = the open-files "
    "limit less 256, at most 10000].",
)
@click.option(
    "--grpc-port",
    envvar="SERVEGATE_GRPC_PORT",
    type=click.IntRange(0, 65535),
    default=0,
    help="Also serve the Open Inference Protocol over gRPC (KServe v2 / Triton's "
    "GRPCInferenceService) on this port, e.g. 8001 as Triton [default: 0 = off; needs the "
    "grpc extra].",
)
@click.option(
    "--server-name",
    envvar="SERVEGATE_SERVER_NAME",
    default="servegate",
    show_default=True,
    help="The name server metadata answers (GET /v2, gRPC ServerMetadata); Triton's own "
    "example clients check for 'triton'.",
)
@click.option(
    "--ssl-certfile",
    envvar="SERVEGATE_SSL_CERTFILE",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Serve HTTPS (and gRPC over TLS) with this certificate chain (PEM).",
)
@click.option(
    "--ssl-keyfile",
    envvar="SERVEGATE_SSL_KEYFILE",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The certificate's private key (PEM), if not in --ssl-certfile.",
)
@click.option(
    "--ssl-ca-certs",
    envvar="SERVEGATE_SSL_CA_CERTS",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Mutual TLS: clients must present a certificate signed by these CAs (PEM).",
)
@click.option(
    "--oidc-issuer",
    envvar="SERVEGATE_OIDC_ISSUER",
    default=None,
    help="Accept this identity provider's tokens (OpenID Connect; keys from its discovery "
    "document) on the management API and on aad_token endpoints.",
)
@click.option(
    "--oidc-audience",
    envvar="SERVEGATE_OIDC_AUDIENCE",
    default=None,
    help="The audience management tokens must be issued for (and aad_token endpoints' default).",
)
@click.option(
    "--oidc-jwks",
    envvar="SERVEGATE_OIDC_JWKS",
    default=None,
    help="The provider's keys from this JWKS file or URL instead of discovery.",
)
@click.option(
    "--oidc-roles-claim",
    envvar="SERVEGATE_OIDC_ROLES_CLAIM",
    default="roles",
    show_default=True,
    help="The token claim whose values grant roles (roles, groups).",
)
@click.option(
    "--oidc-role",
    "oidc_roles",
    envvar="SERVEGATE_OIDC_ROLE",
    multiple=True,
    metavar="VALUE=ROLE",
    help="A claim value granting a role, e.g. ml-platform-admins=owner (repeatable; a value "
    "named like a role grants it).",
)
@click.option(
    "--oidc-client-id",
    envvar="SERVEGATE_OIDC_CLIENT_ID",
    default=None,
    help="The studio's client at the provider (public, PKCE; redirect URI "
    "<gateway URL>/studio/): the studio signs users in there.",
)
@click.option(
    "--oidc-scope",
    envvar="SERVEGATE_OIDC_SCOPE",
    default="openid profile",
    show_default=True,
    help="The scope the studio asks for; its access token must be for --oidc-audience "
    "(Entra ID: 'openid profile api://servegate/.default').",
)
@click.option(
    "--management-rate-limit",
    envvar="SERVEGATE_MANAGEMENT_RATE_LIMIT",
    default=None,
    metavar="RPS[:BURST]",
    help="Per-principal limit on management requests, e.g. 10:20 (429 with Retry-After past "
    "it) [default: off].",
)
@click.option(
    "--batch-roots",
    envvar="SERVEGATE_BATCH_ROOTS",
    default=None,
    metavar="PATH[,PATH...]",
    help="Folders (and s3://bucket/prefix) batch jobs may read inputs from and write "
    "outputs to; others are refused [default: any path the gateway can reach, with a "
    "warning when --host is not loopback].",
)
@click.option(
    "--cpus",
    envvar="SERVEGATE_CPUS",
    type=click.IntRange(min=1),
    default=None,
    help="CPUs to size thread pools and workers for (default: detected from the CPU "
    "affinity and the cgroup CPU quota, whichever is smaller).",
)
@click.option(
    "--log-level",
    envvar="SERVEGATE_LOG_LEVEL",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option(
    "--log-format",
    envvar="SERVEGATE_LOG_FORMAT",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"]),
    help="json: one object per line (time, level, logger, request_id, message, and the "
    "request's endpoint, deployment, status, latency_ms where known).",
)
@click.option(
    "--access-log",
    envvar="SERVEGATE_ACCESS_LOG",
    default="off",
    show_default=True,
    metavar="off|full|FRACTION",
    help="A line per request (logger servegate.access): all of them, or a sampled "
    "fraction such as 0.01.",
)
@store_options
@pass_ctx
def serve(
    ctx: Ctx,
    host: str,
    port: int,
    demo: bool,
    max_request_body_bytes: int,
    graceful_shutdown_s: float,
    max_header_bytes: int,
    header_timeout_s: float,
    max_connections: int,
    grpc_port: int,
    server_name: str,
    ssl_certfile: Path | None,
    ssl_keyfile: Path | None,
    ssl_ca_certs: Path | None,
    oidc_issuer: str | None,
    oidc_audience: str | None,
    oidc_jwks: str | None,
    oidc_roles_claim: str,
    oidc_roles: tuple[str, ...],
    oidc_client_id: str | None,
    oidc_scope: str,
    management_rate_limit: str | None,
    batch_roots: str | None,
    cpus: int | None,
    log_level: str,
    log_format: str,
    access_log: str,
) -> None:
    """Run the gateway."""
    from batch.roots import ROOTS_ENV, parse_roots
    from gateway.app import PortInUse
    from gateway.app import serve as run
    from gateway.settings import GatewaySettings
    from runtimes.resources import CPUS_ENV

    if cpus is not None:
        # Through the environment, so batch runners and worker processes see it too.
        os.environ[CPUS_ENV] = str(cpus)
    if batch_roots is not None:
        # Through the environment, so batch runners check the files they list too.
        os.environ[ROOTS_ENV] = ",".join(parse_roots(batch_roots))

    try:
        run(
            GatewaySettings(
                home=ctx.home,
                host=host,
                port=port,
                demo=demo,
                max_request_body_bytes=max_request_body_bytes,
                graceful_shutdown_s=graceful_shutdown_s,
                max_header_bytes=max_header_bytes,
                header_timeout_s=header_timeout_s,
                max_connections=max_connections,
                grpc_port=grpc_port,
                server_name=server_name,
                ssl_certfile=ssl_certfile,
                ssl_keyfile=ssl_keyfile,
                ssl_ca_certs=ssl_ca_certs,
                oidc=_oidc_settings(
                    oidc_issuer,
                    oidc_audience,
                    oidc_jwks,
                    oidc_roles_claim,
                    oidc_roles,
                    oidc_client_id,
                    oidc_scope,
                ),
                management_rate_limit=_rate_limit(management_rate_limit),
                log_format=log_format,
                access_log=_access_log(access_log),
            ),
            log_level,
        )
    except PortInUse as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


def _access_log(raw: str) -> float:
    if raw in ("off", "full"):
        return 0.0 if raw == "off" else 1.0
    try:
        fraction = float(raw)
    except ValueError:
        fraction = -1.0
    if not 0.0 <= fraction <= 1.0:
        raise click.UsageError(f"--access-log '{raw}': expected off, full or a fraction 0-1")
    return fraction


def _rate_limit(raw: str | None) -> tuple[float, int] | None:
    if not raw:
        return None
    rate, _, burst = raw.partition(":")
    try:
        parsed = float(rate), int(burst) if burst else max(1, math.ceil(float(rate)))
    except ValueError:
        parsed = (0.0, 0)
    if not (parsed[0] > 0 and parsed[1] >= 1):
        raise click.UsageError(
            f"--management-rate-limit '{raw}': expected RPS[:BURST], e.g. 10 or 10:20"
        )
    return parsed


def _oidc_settings(
    issuer: str | None,
    audience: str | None,
    jwks: str | None,
    roles_claim: str,
    roles: tuple[str, ...],
    client_id: str | None,
    scope: str,
) -> Any:
    if issuer is None:
        if audience or jwks or roles or client_id:
            raise click.UsageError(
                "--oidc-audience, --oidc-jwks, --oidc-role and --oidc-client-id need --oidc-issuer"
            )
        return None
    if not audience:
        raise click.UsageError("--oidc-issuer needs --oidc-audience (what its tokens are for)")
    from deploy.roles import ROLES
    from gateway.oidc import OidcSettings

    role_map = {}
    for item in roles:
        value, _, role = item.rpartition("=")
        if not value or role not in ROLES:
            raise click.UsageError(
                f"--oidc-role '{item}': expected VALUE=ROLE with a role of {', '.join(ROLES)}"
            )
        role_map[value] = role
    return OidcSettings(
        issuer, audience, jwks, roles_claim, role_map, client_id=client_id, scope=scope
    )


# -- models -----------------------------------------------------------------------
@main.group()
def model() -> None:
    """Register and inspect models."""


def _model_options(command: Any) -> Any:
    """What `model register` and `model create` share."""
    for option in reversed(
        [
            click.option("--name", "-n", required=True),
            click.option(
                "--version",
                "-v",
                type=click.IntRange(min=1),
                default=None,
                help="Default: the next version.",
            ),
            click.option(
                "--path",
                "-p",
                required=True,
                type=click.Path(exists=True, path_type=Path),
                help="A model file, or a folder (an MLflow model, a Triton repository).",
            ),
            click.option("--description", "-d", default=""),
            click.option(
                "--strict",
                is_flag=True,
                help="Refuse a model saved by another version of its framework (default: "
                "register it with a warning, as Azure ML loads it).",
            ),
        ]
    ):
        command = option(command)
    return command


@model.command("register")
@_model_options
@click.option("--runtime", default=None, help="Default: from the file suffix or the folder.")
@pass_ctx
def model_register(
    ctx: Ctx,
    name: str,
    version: int | None,
    path: Path,
    description: str,
    strict: bool,
    runtime: str | None,
) -> None:
    """Register a model file or folder; its signature is read from it."""
    _print_warned(
        ctx.client.register_model(name, path, version, runtime, description, strict=strict)
    )


#: Azure ML's model asset types -> the runtime that serves them (None: from the files)
_MODEL_TYPES = {"custom_model": None, "mlflow_model": "mlflow", "triton_model": "triton"}


@model.command("create")
@_model_options
@click.option(
    "--type",
    "-t",
    "model_type",
    type=click.Choice(list(_MODEL_TYPES)),
    default="custom_model",
    show_default=True,
    help="Azure ML's asset type: mlflow_model and triton_model pick their runtime; "
    "custom_model, the file's.",
)
@pass_ctx
def model_create(
    ctx: Ctx,
    name: str,
    version: int | None,
    path: Path,
    description: str,
    strict: bool,
    model_type: str,
) -> None:
    """Register a model, as `az ml model create` does (model register, by Azure's name)."""
    runtime = _MODEL_TYPES[model_type]
    _print_warned(
        ctx.client.register_model(name, path, version, runtime, description, strict=strict)
    )


@model.command("list")
@click.option("--name", "-n", default=None)
@pass_ctx
def model_list(ctx: Ctx, name: str | None) -> None:
    """List registered models with their signatures."""
    _print(ctx.client.list_models(name))


@model.command("show")
@click.option("--name", "-n", required=True)
@click.option(
    "--version", "-v", type=click.IntRange(min=1), default=None, help="Default: the latest."
)
@pass_ctx
def model_show(ctx: Ctx, name: str, version: int | None) -> None:
    """Show one model version and its signature."""
    _print(ctx.client.show_model(name, version))


# -- endpoints --------------------------------------------------------------------
def _percentages(text: str, option: str) -> dict[str, int]:
    """'blue=90,green=10' or 'blue=90 green=10' (Azure's form) -> {blue: 90, green: 10}."""
    result: dict[str, int] = {}
    for part in filter(None, re.split(r"[,\s]+", text.strip())):
        name, sep, value = part.partition("=")
        if not sep or not (value.strip().isascii() and value.strip().isdigit()):
            raise click.BadParameter(f"'{part}' is not NAME=PERCENT", param_hint=option)
        result[name.strip()] = int(value)
    return result


_NO_WAIT_HELP = (
    "Answer at once (provisioning_state Creating or Updating) and load in the background; "
    "`deployment show` tells the outcome. Default: wait until it is Succeeded or Failed."
)


# -- files -----------------------------------------------------------------------
def _set_option(help_text: str) -> Any:
    """`--set PATH=VALUE`, repeatable (az's): the values land in `assignments`."""
    return click.option("--set", "assignments", multiple=True, metavar="PATH=VALUE", help=help_text)


def _file_options(command: Any, required: bool = True) -> Any:
    """-f (the YAML file), --set path=value (repeatable) and --strict, as az takes them."""
    command = click.option(
        "--strict",
        is_flag=True,
        help="Refuse Azure ML fields servegate does not use (default: a warning each).",
    )(command)
    command = _set_option("Set a field of the file, e.g. --set instance_count=2 (repeatable).")(
        command
    )
    return click.option(
        "--file",
        "-f",
        "file",
        required=required,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="The YAML file.",
    )(command)


def _file_options_optional(command: Any) -> Any:
    """_file_options for `update`, which also works without a file (-n, -e, --set)."""
    return _file_options(command, required=False)


def _assign(doc: dict[str, Any], assignment: str) -> None:
    """`--set a.b=value`: the value read as YAML (2 is a number, true a boolean)."""
    path, sep, text = assignment.partition("=")
    keys = path.split(".") if path else []
    if not sep or not all(keys):
        raise click.BadParameter(f"'{assignment}': use PATH=VALUE", param_hint="--set")
    try:
        value = yaml.safe_load(text) if text else ""
    except (yaml.YAMLError, RecursionError):
        value = text
    node: Any = doc
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                node = node.setdefault(key, {})
        else:
            raise click.BadParameter(
                f"'{assignment}': '{'.'.join(keys[:i])}' holds no field '{key}'",
                param_hint="--set",
            )


def _prepared(
    ctx: Ctx,
    kind: type[SpecT],
    file: Path,
    assignments: tuple[str, ...] = (),
    overrides: dict[str, Any] | None = None,
    strict: bool = False,
) -> tuple[SpecT, dict[str, Any]]:
    """The file as a spec and as the body to send: --set applied, then -n/-e; checked
    here (all errors at once; Azure-only fields refused with --strict); relative paths
    read from the file's folder, as Azure ML does; a local scoring-code folder and model
    uploaded (a model registered under its `name`, else <endpoint>-<deployment>; the
    same content again is the same version)."""
    raw = read_yaml(file.read_text(), str(file))
    if not isinstance(raw, dict):
        raise SpecError(f"{file}: expected a mapping of fields")
    for assignment in assignments:
        _assign(raw, assignment)
    raw.update({k: v for k, v in (overrides or {}).items() if v})
    spec = parse_spec(kind, raw, str(file))
    if strict:
        spec.check_strict(str(file))
    raw.pop("$schema", None)
    code_configuration = getattr(spec, "code_configuration", None)
    if code_configuration is not None:
        code = (file.parent / code_configuration.code).resolve()
        if not (code / code_configuration.scoring_script).is_file():
            raise SpecError(
                f"{file}: field 'code_configuration': no "
                f"'{code_configuration.scoring_script}' in {code}"
            )
        raw["code_configuration"] = {
            "code": ctx.client.upload_code(code),
            "scoring_script": code_configuration.scoring_script,
        }
    baseline = getattr(spec, "baseline", None)
    if baseline is not None and baseline.path is not None and "://" not in baseline.path:
        local = (file.parent / baseline.path).resolve()
        if not local.is_file():
            raise SpecError(f"{file}: field 'baseline.path': no file at {local}")
        raw["baseline"] = {"path": ctx.client.upload_data(str(local))}
    model = getattr(spec, "model", None)
    if model is not None and model.path is not None:
        model_path = (file.parent / model.path).resolve()
        if not model_path.exists():
            raise SpecError(f"{file}: field 'model.path': no file or folder at {model_path}")
        runtime = getattr(spec, "runtime", None)
        record = ctx.client.register_model(
            model.name or f"{raw['endpoint_name']}-{raw['name']}",
            model_path,
            model.version,
            runtime,
            model.description or "",
            model.tags,
            reuse_identical=True,
            strict=strict,
        )
        for warning in record.get("warnings", []):
            click.echo(f"warning: {warning}", err=True)
        given = raw["model"] if isinstance(raw["model"], dict) else {}
        raw["model"] = {
            # Azure-only fields stay, for the gateway's warnings about them.
            **{k: v for k, v in given.items() if k in ModelRef.azure_only},
            "name": record["name"],
            "version": record["version"],
        }
        raw["runtime"] = runtime
    return spec, raw


@main.group()
def endpoint() -> None:
    """Create, inspect, update, invoke and delete online endpoints."""


@endpoint.command("create")
@_file_options
@click.option("--name", "-n", default=None, help="Override the file's name.")
@pass_ctx
def endpoint_create(
    ctx: Ctx, file: Path, assignments: tuple[str, ...], strict: bool, name: str | None
) -> None:
    """Create an endpoint from endpoint.yml."""
    _, body = _prepared(ctx, EndpointSpec, file, assignments, {"name": name}, strict)
    _print_warned(ctx.client.create_endpoint(body))


@endpoint.command("show")
@click.option("--name", "-n", required=True)
@pass_ctx
def endpoint_show(ctx: Ctx, name: str) -> None:
    """Show an endpoint: its traffic, mirror traffic, auth mode and scoring URI."""
    _print(ctx.client.show_endpoint(name))


@endpoint.command("list")
@pass_ctx
def endpoint_list(ctx: Ctx) -> None:
    """List online endpoints."""
    _print(ctx.client.list_endpoints())


@endpoint.command("update")
@click.option("--name", "-n", required=True)
@click.option("--traffic", default=None, help="e.g. 'blue=90,green=10'; sums to 0 or 100.")
@click.option("--mirror-traffic", default=None, help="e.g. 'green=10'; at most 50.")
@click.option("--description", default=None)
@click.option("--reason", default="", help="Recorded in the audit log.")
@pass_ctx
def endpoint_update(
    ctx: Ctx,
    name: str,
    traffic: str | None,
    mirror_traffic: str | None,
    description: str | None,
    reason: str,
) -> None:
    """Change traffic, mirror traffic or description (atomically)."""
    changes: dict[str, Any] = {"reason": reason}
    if traffic is not None:
        changes["traffic"] = _percentages(traffic, "--traffic")
    if mirror_traffic is not None:
        changes["mirror_traffic"] = _percentages(mirror_traffic, "--mirror-traffic")
    if description is not None:
        changes["description"] = description
    _print(ctx.client.update_endpoint(name, changes))


@endpoint.command("delete")
@click.option("--name", "-n", required=True)
@click.option("--yes", "-y", is_flag=True, help="Do not ask.")
@pass_ctx
def endpoint_delete(ctx: Ctx, name: str, yes: bool) -> None:
    """Delete an endpoint and all its deployments."""
    if not yes:
        click.confirm(f"Delete endpoint '{name}' and all its deployments?", abort=True)
    ctx.client.delete_endpoint(name)
    click.echo(f"deleted endpoint '{name}'")


@endpoint.command("get-credentials")
@click.option("--name", "-n", required=True)
@pass_ctx
def endpoint_credentials(ctx: Ctx, name: str) -> None:
    """Print {primaryKey, secondaryKey} (or {accessToken, ...} for token auth)."""
    _print(ctx.client.credentials(name))


@endpoint.command("regenerate-keys")
@click.option("--name", "-n", required=True)
@click.option("--key-type", required=True, type=click.Choice(["primary", "secondary"]))
@pass_ctx
def endpoint_regenerate(ctx: Ctx, name: str, key_type: str) -> None:
    """Replace one key; the old one stops working at once."""
    _print(ctx.client.regenerate_key(name, key_type))


@endpoint.command("invoke")
@click.option("--name", "-n", required=True)
@click.option("--request-file", "-r", required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--deployment",
    "--deployment-name",
    "-d",
    default=None,
    help="Target one deployment, whatever its traffic.",
)
@pass_ctx
def endpoint_invoke(ctx: Ctx, name: str, request_file: Path, deployment: str | None) -> None:
    """Score a request file: {"input_data": ...} (/score) or {"inputs": [...]} (v2)."""
    body = request_file.read_bytes()
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(
            f"{request_file} is not JSON: {exc}", param_hint="--request-file"
        ) from None
    creds = ctx.client.credentials(name)
    key = creds.get("primaryKey") or creds.get("accessToken")
    v2 = isinstance(doc, dict) and "inputs" in doc
    _print(ctx.client.invoke(name, body, key, deployment, v2))


# -- deployments ------------------------------------------------------------------
@main.group()
def deployment() -> None:
    """Create, list and delete online deployments."""


@deployment.command("create")
@_file_options
@click.option("--name", "-n", default=None, help="Override the file's name.")
@click.option(
    "--endpoint-name", "--endpoint", "-e", default=None, help="Override the file's endpoint_name."
)
@click.option("--all-traffic", is_flag=True, help="Send 100% of live traffic to it.")
@click.option("--no-wait", is_flag=True, help=_NO_WAIT_HELP)
@pass_ctx
def deployment_create(
    ctx: Ctx,
    file: Path,
    assignments: tuple[str, ...],
    strict: bool,
    name: str | None,
    endpoint_name: str | None,
    all_traffic: bool,
    no_wait: bool,
) -> None:
    """Create a deployment from deployment.yml (an existing one: use update); the model
    loads and warms before it counts."""
    overrides = {"name": name, "endpoint_name": endpoint_name}
    _, body = _prepared(ctx, OnlineDeploymentSpec, file, assignments, overrides, strict)
    _print_warned(
        ctx.client.create_deployment(
            body["endpoint_name"], body, all_traffic, mode="create", no_wait=no_wait
        )
    )


@deployment.command("update")
@_file_options_optional
@click.option(
    "--name", "-n", default=None, help="Override the file's name (without -f: the deployment)."
)
@click.option(
    "--endpoint-name",
    "--endpoint",
    "-e",
    default=None,
    help="Override the file's endpoint_name (without -f: the deployment's endpoint).",
)
@click.option("--no-wait", is_flag=True, help=_NO_WAIT_HELP)
@pass_ctx
def deployment_update(
    ctx: Ctx,
    file: Path | None,
    assignments: tuple[str, ...],
    strict: bool,
    name: str | None,
    endpoint_name: str | None,
    no_wait: bool,
) -> None:
    """Update a deployment in place (model version, instances, batching...): new instances
    load and warm up, traffic switches, the old ones drain. No request fails. Without
    -f, as az does: -n, -e and --set change the stored deployment's fields."""
    if file is None:
        if not (name and endpoint_name and assignments):
            raise click.UsageError(
                "give -f FILE, or -n NAME -e ENDPOINT with --set PATH=VALUE (e.g. "
                "--set instance_count=2)"
            )
        patch: dict[str, Any] = {}
        for assignment in assignments:
            _assign(patch, assignment)
        _print_warned(ctx.client.patch_deployment(endpoint_name, name, patch, no_wait))
        return
    overrides = {"name": name, "endpoint_name": endpoint_name}
    _, body = _prepared(ctx, OnlineDeploymentSpec, file, assignments, overrides, strict)
    _print_warned(
        ctx.client.create_deployment(
            body["endpoint_name"], body, False, mode="update", no_wait=no_wait
        )
    )


@deployment.command("list")
@click.option("--endpoint-name", "--endpoint", "-e", required=True)
@pass_ctx
def deployment_list(ctx: Ctx, endpoint_name: str) -> None:
    """List an endpoint's deployments with their state on this replica."""
    _print(ctx.client.list_deployments(endpoint_name))


@deployment.command("show")
@click.option("--name", "-n", required=True)
@click.option("--endpoint-name", "--endpoint", "-e", required=True)
@pass_ctx
def deployment_show(ctx: Ctx, name: str, endpoint_name: str) -> None:
    """Show a deployment: its spec, provisioning_state and instances ready."""
    _print(ctx.client.show_deployment(endpoint_name, name))


@deployment.command("get-logs")
@click.option("--name", "-n", required=True)
@click.option("--endpoint-name", "--endpoint", "-e", required=True)
@click.option("--lines", "-l", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option("--follow", is_flag=True, help="Keep printing new lines (Ctrl-C stops).")
@pass_ctx
def deployment_get_logs(ctx: Ctx, name: str, endpoint_name: str, lines: int, follow: bool) -> None:
    """The deployment's own log, a line each with its time: its scoring script's print
    and logging output, worker starts and exits, load errors, from every gateway replica.
    (-o/--query without --follow: the lines as records.)"""
    entries = ctx.client.deployment_logs(endpoint_name, name, lines)
    if not follow and (_setting("output") or _setting("query")):
        _print(entries)
        return
    after = 0
    while True:
        for entry in entries:
            click.echo(f"{entry['at']} {entry['line']}")
            after = entry["id"]
        if not follow:
            return
        time.sleep(1.0)
        entries = ctx.client.deployment_logs(endpoint_name, name, 10_000, after)


@deployment.command("delete")
@click.option("--name", "-n", required=True)
@click.option("--endpoint-name", "--endpoint", "-e", required=True)
@pass_ctx
def deployment_delete(ctx: Ctx, name: str, endpoint_name: str) -> None:
    """Delete a deployment that takes no traffic; in-flight requests finish first."""
    ctx.client.delete_deployment(endpoint_name, name)
    click.echo(f"deleted deployment '{name}' of endpoint '{endpoint_name}'")


# -- rollouts ---------------------------------------------------------------------
@main.group()
def rollout() -> None:
    """Blue/green rollouts that promote step by step and roll back on their own."""


@rollout.command("start")
@click.option("--endpoint", "--endpoint-name", "-e", required=True)
@click.option("--to", "to", required=True, help="The candidate deployment.")
@click.option("--from", "source", default=None, help="Default: the deployment with most traffic.")
@click.option("--steps", default="10,25,50,100", show_default=True, help="Percent per step.")
@click.option("--step-interval", default="30s", show_default=True)
@click.option("--mirror-first", default=None, help="Mirror to the candidate first, e.g. 60s.")
@click.option("--mirror-percent", type=click.IntRange(1, 50), default=50, show_default=True)
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=0.99, show_default=True)
@click.option("--max-error-rate", type=click.FloatRange(0, 1), default=0.01, show_default=True)
@click.option("--max-p99-latency-ms", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--min-requests", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--delete-old", is_flag=True, help="Delete the old deployment at the end.")
@pass_ctx
def rollout_start(
    ctx: Ctx,
    endpoint: str,
    to: str,
    source: str | None,
    steps: str,
    step_interval: str,
    mirror_first: str | None,
    mirror_percent: int,
    min_agreement: float,
    max_error_rate: float,
    max_p99_latency_ms: float | None,
    min_requests: int,
    delete_old: bool,
) -> None:
    """Start a rollout; it runs in the gateway (this command returns at once)."""
    try:
        step_list = [int(s) for s in steps.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(
            f"'{steps}' is not a list like 10,25,50,100", param_hint="--steps"
        ) from None
    plan: dict[str, Any] = {
        "to": to,
        "steps": step_list,
        "step_interval_s": _seconds(step_interval),
        "mirror_first_s": _seconds(mirror_first) if mirror_first else 0.0,
        "mirror_percent": mirror_percent,
        "min_agreement": min_agreement,
        "max_error_rate": max_error_rate,
        "max_p99_latency_ms": max_p99_latency_ms,
        "min_requests": min_requests,
        "delete_old": delete_old,
    }
    if source:
        plan["from"] = source
    _print(ctx.client.start_rollout(endpoint, plan))


@rollout.command("status")
@click.option("--endpoint", "--endpoint-name", "-e", required=True)
@pass_ctx
def rollout_status(ctx: Ctx, endpoint: str) -> None:
    """The latest rollout: state, step, traffic, the candidate's numbers against the gates."""
    _print(ctx.client.rollout_status(endpoint))


@rollout.command("abort")
@click.option("--endpoint", "--endpoint-name", "-e", required=True)
@pass_ctx
def rollout_abort(ctx: Ctx, endpoint: str) -> None:
    """Roll back now, to the traffic the rollout started from."""
    _print(ctx.client.abort_rollout(endpoint))


@rollout.command("list")
@click.option("--endpoint", "--endpoint-name", "-e", required=True)
@pass_ctx
def rollout_list(ctx: Ctx, endpoint: str) -> None:
    """Rollout history, newest first."""
    _print(ctx.client.list_rollouts(endpoint))


# -- batch ------------------------------------------------------------------------
@main.group()
def batch() -> None:
    """Batch endpoints, deployments and jobs over files, folders and globs."""


@batch.group("endpoint")
def batch_endpoint() -> None:
    """Batch endpoints."""


@batch_endpoint.command("create")
@_file_options
@click.option("--name", "-n", default=None, help="Override the file's name.")
@pass_ctx
def batch_endpoint_create(
    ctx: Ctx, file: Path, assignments: tuple[str, ...], strict: bool, name: str | None
) -> None:
    """Create a batch endpoint from batch-endpoint.yml."""
    _, body = _prepared(ctx, BatchEndpointSpec, file, assignments, {"name": name}, strict)
    _print_warned(ctx.client.create_batch_endpoint(body))


@batch_endpoint.command("show")
@click.option("--name", "-n", required=True)
@pass_ctx
def batch_endpoint_show(ctx: Ctx, name: str) -> None:
    """Show a batch endpoint and its default deployment."""
    _print(ctx.client.show_batch_endpoint(name))


@batch_endpoint.command("list")
@pass_ctx
def batch_endpoint_list(ctx: Ctx) -> None:
    """List batch endpoints."""
    _print(ctx.client.list_batch_endpoints())


@batch_endpoint.command("update")
@click.option("--name", "-n", required=True)
@_set_option("e.g. --set defaults.deployment_name=green, --set description=...")
@pass_ctx
def batch_endpoint_update(ctx: Ctx, name: str, assignments: tuple[str, ...]) -> None:
    """Change the description, tags or default deployment."""
    current = ctx.client.show_batch_endpoint(name)
    changes: dict[str, Any] = {
        "description": current.get("description", ""),
        "tags": dict(current.get("tags") or {}),
        "defaults": dict(current.get("defaults") or {}),
    }
    for assignment in assignments:
        _assign(changes, assignment)
    _print(ctx.client.update_batch_endpoint(name, changes))


@batch_endpoint.command("delete")
@click.option("--name", "-n", required=True)
@click.option("--yes", "-y", is_flag=True, help="Do not ask.")
@pass_ctx
def batch_endpoint_delete(ctx: Ctx, name: str, yes: bool) -> None:
    """Delete a batch endpoint and its deployments (refused while jobs run)."""
    if not yes:
        click.confirm(f"Delete batch endpoint '{name}' and its deployments?", abort=True)
    ctx.client.delete_batch_endpoint(name)
    click.echo(f"deleted batch endpoint '{name}'", err=True)


@batch.group("deployment")
def batch_deployment() -> None:
    """Batch deployments."""


def _put_batch_deployment(
    ctx: Ctx,
    file: Path,
    assignments: tuple[str, ...],
    strict: bool,
    overrides: dict[str, Any],
    mode: str,
    set_default: bool,
) -> None:
    _, body = _prepared(ctx, BatchDeploymentSpec, file, assignments, overrides, strict)
    _print_warned(
        ctx.client.create_batch_deployment(body["endpoint_name"], body, mode, set_default)
    )


@batch_deployment.command("create")
@_file_options
@click.option("--name", "-n", default=None, help="Override the file's name.")
@click.option(
    "--endpoint-name", "--endpoint", "-e", default=None, help="Override the file's endpoint_name."
)
@click.option("--set-default", is_flag=True, help="Make it the endpoint's default deployment.")
@pass_ctx
def batch_deployment_create(
    ctx: Ctx,
    file: Path,
    assignments: tuple[str, ...],
    strict: bool,
    name: str | None,
    endpoint_name: str | None,
    set_default: bool,
) -> None:
    """Create a batch deployment (an existing one: use update); a local model and scoring
    code are uploaded. The endpoint's first deployment becomes its default."""
    overrides = {"name": name, "endpoint_name": endpoint_name}
    _put_batch_deployment(ctx, file, assignments, strict, overrides, "create", set_default)


@batch_deployment.command("update")
@_file_options
@click.option("--name", "-n", default=None, help="Override the file's name.")
@click.option(
    "--endpoint-name", "--endpoint", "-e", default=None, help="Override the file's endpoint_name."
)
@click.option("--set-default", is_flag=True, help="Make it the endpoint's default deployment.")
@pass_ctx
def batch_deployment_update(
    ctx: Ctx,
    file: Path,
    assignments: tuple[str, ...],
    strict: bool,
    name: str | None,
    endpoint_name: str | None,
    set_default: bool,
) -> None:
    """Update a batch deployment (jobs started before keep what they started with)."""
    overrides = {"name": name, "endpoint_name": endpoint_name}
    _put_batch_deployment(ctx, file, assignments, strict, overrides, "update", set_default)


@batch_deployment.command("show")
@click.option("--name", "-n", required=True)
@click.option("--endpoint-name", "--endpoint", "-e", required=True)
@pass_ctx
def batch_deployment_show(ctx: Ctx, name: str, endpoint_name: str) -> None:
    """Show a batch deployment."""
    _print(ctx.client.show_batch_deployment(endpoint_name, name))


@batch_deployment.command("list")
@click.option("--endpoint-name", "--endpoint", "-e", required=True)
@pass_ctx
def batch_deployment_list(ctx: Ctx, endpoint_name: str) -> None:
    """List a batch endpoint's deployments."""
    _print(ctx.client.list_batch_deployments(endpoint_name))


@batch_deployment.command("delete")
@click.option("--name", "-n", required=True)
@click.option("--endpoint-name", "--endpoint", "-e", required=True)
@click.option("--yes", "-y", is_flag=True, help="Do not ask.")
@pass_ctx
def batch_deployment_delete(ctx: Ctx, name: str, endpoint_name: str, yes: bool) -> None:
    """Delete a batch deployment (not the default while others remain; not while its
    jobs run)."""
    if not yes:
        click.confirm(f"Delete batch deployment '{name}' of '{endpoint_name}'?", abort=True)
    ctx.client.delete_batch_deployment(endpoint_name, name)
    click.echo(f"deleted batch deployment '{name}' of batch endpoint '{endpoint_name}'", err=True)


def _wait_for_job(ctx: Ctx, job_id: str) -> dict[str, Any]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
    ) as progress:
        task = progress.add_task(job_id, total=None, rate="")
        while True:
            job = ctx.client.job(job_id)
            states = job.get("mini_batch_states", {})
            rate = f"{job['items_per_s']:.0f} rows/s" if job.get("items_per_s") else ""
            progress.update(
                task,
                total=job.get("mini_batches"),
                completed=states.get("done", 0),
                description=f"{job_id} {job['state']}",
                rate=rate,
            )
            if job["state"] in FINAL_JOB_STATES:
                return dict(job)
            if not job.get("runner_alive") and job["state"] in WAITING_FOR_A_RUNNER:
                time.sleep(1)
                job = ctx.client.job(job_id)
                if not job.get("runner_alive") and job["state"] in WAITING_FOR_A_RUNNER:
                    return dict(job)
            time.sleep(0.3)


#: A job in these states with no runner for a second has lost it (until the supervisor
#: resumes it): `--wait` stops there rather than wait for ever.
WAITING_FOR_A_RUNNER = frozenset({JobState.RUNNING, JobState.QUEUED})
#: `--wait` exit codes; the commands' help repeats them.
EXIT_FAILED, EXIT_COMPLETED_WITH_FAILURES = 1, 3  # 0: completed, every mini-batch done
_WAIT_HELP = (
    "Show progress until the job ends. Exit code: 0 completed with every mini-batch "
    "done; 3 completed, but some mini-batches failed (tolerated by error_threshold); "
    "1 failed, cancelled or its runner stopped."
)


_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def _here(uri: str) -> str:
    """A local path (or glob) made absolute against the caller's working directory, so
    the gateway reads what the caller means; URIs (s3://...) as they are."""
    if _URI.match(uri):
        return uri
    return os.path.abspath(os.path.expanduser(uri))


def _is_local(url: str) -> bool:
    """Whether the gateway runs on this host (it can read the caller's files)."""
    from urllib.parse import urlsplit

    return urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")


def _uploaded(ctx: Ctx, local: str) -> str:
    """Upload local inputs, with a progress bar on stderr; the gateway's path for them."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress(
        "uploading",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("upload", total=None)
        path = ctx.client.upload_data(
            os.path.expanduser(local),
            lambda sent, total: bar.update(task, completed=sent, total=total),
        )
    click.echo(f"uploaded {local} to the gateway: {path}", err=True)
    return path


def _finish_waiting(ctx: Ctx, job_id: str) -> None:
    """Wait for the job, print its summary, and exit with the code for its outcome."""
    final = _wait_for_job(ctx, job_id)
    _print(final.get("summary") or final)
    if final["state"] != JobState.COMPLETED:
        raise SystemExit(EXIT_FAILED)
    failed = (final.get("summary") or {}).get("mini_batches", {}).get("failed", 0)
    if failed:
        raise SystemExit(EXIT_COMPLETED_WITH_FAILURES)


#: what `batch list -o table` shows of a job
JOB_COLUMNS = ("id", "endpoint", "deployment", "state", "done", "failed", "created_at")


@batch.command("invoke")
@click.option(
    "--endpoint",
    "--endpoint-name",
    "-e",
    "-n",
    "--name",
    "endpoint",
    required=True,
    help="A batch endpoint, or an online one.",
)
@click.option("--deployment", "--deployment-name", "-d", default=None)
@click.option(
    "--input",
    "input_uri",
    required=True,
    help="File, folder or glob; local (relative to here) or s3://.",
)
@click.option("--input-type", type=click.Choice(["uri_file", "uri_folder"]), default=None)
@click.option(
    "--output-path",
    "output_uri",
    required=True,
    help="Output folder; local (relative to here) or s3://. (-o/--output is the answer's "
    "format, as everywhere.)",
)
@click.option("--mini-batch-size", type=click.IntRange(min=1), default=None)
@click.option("--instance-count", type=click.IntRange(min=1), default=None)
@click.option("--error-threshold", type=click.IntRange(min=-1), default=None)
@click.option("--output-file-name", default=None)
@click.option("--wait", is_flag=True, help=_WAIT_HELP)
@click.option(
    "--upload/--no-upload",
    default=None,
    help="Upload a local --input to the gateway first [default: when the gateway is on "
    "another host].",
)
@pass_ctx
def batch_invoke(
    ctx: Ctx,
    endpoint: str,
    deployment: str | None,
    input_uri: str,
    input_type: str | None,
    output_uri: str,
    mini_batch_size: int | None,
    instance_count: int | None,
    error_threshold: int | None,
    output_file_name: str | None,
    wait: bool,
    upload: bool | None,
) -> None:
    """Start a batch job."""
    local = not _URI.match(input_uri)
    if local and (upload or (upload is None and not _is_local(ctx.url))):
        input_uri = _uploaded(ctx, input_uri)
    job = ctx.client.invoke_batch(
        {
            "endpoint": endpoint,
            "deployment": deployment,
            "input": _here(input_uri),
            "input_type": input_type,
            "output": _here(output_uri),
            "mini_batch_size": mini_batch_size,
            "instance_count": instance_count,
            "error_threshold": error_threshold,
            "output_file_name": output_file_name,
        }
    )
    if not wait:
        _print(job)
        return
    _finish_waiting(ctx, job["id"])


@batch.command("show")
@click.argument("job_id")
@pass_ctx
def batch_show(ctx: Ctx, job_id: str) -> None:
    """State, mini-batches done/failed/pending, rows/s, errors."""
    _print(ctx.client.job(job_id))


@batch.command("list")
@click.option("--endpoint", "--endpoint-name", "-e", default=None)
@pass_ctx
def batch_list(ctx: Ctx, endpoint: str | None) -> None:
    """Jobs, newest first (-o table: what fits a line)."""
    _print(ctx.client.jobs(endpoint), JOB_COLUMNS)


@batch.command("cancel")
@click.argument("job_id")
@pass_ctx
def batch_cancel(ctx: Ctx, job_id: str) -> None:
    """Cancel a job: its workers stop; done mini-batches stay done."""
    _print(ctx.client.job_action(job_id, "cancel"))


@batch.command("resume")
@click.argument("job_id")
@click.option("--wait", is_flag=True, help=_WAIT_HELP)
@pass_ctx
def batch_resume(ctx: Ctx, job_id: str, wait: bool) -> None:
    """Continue a job whose runner died; finished mini-batches are not redone."""
    job = ctx.client.job_action(job_id, "resume")
    if wait:
        _finish_waiting(ctx, job["id"])
    else:
        _print(job)


@batch.command("retry")
@click.argument("job_id")
@click.option("--failed-only", is_flag=True, required=True, help="Re-run only failed mini-batches.")
@click.option("--wait", is_flag=True, help=_WAIT_HELP)
@pass_ctx
def batch_retry(ctx: Ctx, job_id: str, failed_only: bool, wait: bool) -> None:
    """Re-run only the mini-batches that failed and rebuild the output."""
    del failed_only  # the one retry there is; the flag says so, as Azure users ask for it
    job = ctx.client.job_action(job_id, "retry")
    if wait:
        _finish_waiting(ctx, job["id"])
    else:
        _print(job)


@batch.command("logs")
@click.argument("job_id")
@click.option("--follow", is_flag=True, help="Keep printing until the job ends.")
@pass_ctx
def batch_logs(ctx: Ctx, job_id: str, follow: bool) -> None:
    """The job runner's log (planning, mini-batch failures and retries, the summary)."""
    shown = ctx.client.job_logs(job_id)
    click.echo(shown, nl=False)
    while follow:
        state = ctx.client.job(job_id)["state"]
        time.sleep(1.0)
        text = ctx.client.job_logs(job_id)
        # The log only grows (a resumed job's runner appends).
        click.echo(text[len(shown) :], nl=False)
        shown = text
        if state in FINAL_JOB_STATES:
            return


# -- streaming --------------------------------------------------------------------
@main.group()
def stream() -> None:
    """Score Kafka topics (any Kafka-compatible broker)."""


@stream.command("run")
@click.option("--endpoint", "--endpoint-name", "-e", required=True)
@click.option(
    "--deployment",
    "--deployment-name",
    "-d",
    default=None,
    help="Default: the one with most traffic.",
)
@click.option("--bootstrap-servers", required=True, help="host:port[,host:port]")
@click.option("--input-topic", required=True)
@click.option("--output-topic", required=True)
@click.option("--group-id", default=None, help="Default: servegate-<endpoint>.")
@click.option("--dead-letter-topic", default=None)
@click.option("--max-batch-size", type=click.IntRange(1, 100_000), default=256, show_default=True)
@click.option("--max-batch-delay-ms", type=click.IntRange(0, 60_000), default=20, show_default=True)
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus metrics here.")
@click.option(
    "--group-instance-id",
    default=None,
    help="Kafka static membership: a consumer restarted with the same id gets its "
    "partitions back at once, instead of after the old member's session timeout.",
)
@click.option(
    "--session-timeout-ms",
    type=click.IntRange(1000, 600_000),
    default=10_000,
    show_default=True,
    help="How long the group waits for a silent member before giving its partitions away.",
)
@store_options
@pass_ctx
def stream_run(
    ctx: Ctx,
    endpoint: str,
    deployment: str | None,
    bootstrap_servers: str,
    input_topic: str,
    output_topic: str,
    group_id: str | None,
    dead_letter_topic: str | None,
    max_batch_size: int,
    max_batch_delay_ms: int,
    metrics_port: int | None,
    group_instance_id: str | None,
    session_timeout_ms: int,
) -> None:
    """Consume INPUT_TOPIC, score each record, produce results (at least once)."""
    logging_setup()
    from batch.streaming import StreamSettings, run_stream

    settings = StreamSettings(
        bootstrap_servers,
        input_topic,
        output_topic,
        group_id or f"servegate-{endpoint}",
        dead_letter_topic,
        max_batch_size,
        max_batch_delay_ms,
        group_instance_id=group_instance_id,
        session_timeout_ms=session_timeout_ms,
    )
    run_stream(ctx.home, endpoint, deployment, settings, metrics_port)


@stream.command("jobs")
@click.option("--bootstrap-servers", required=True)
@click.option("--jobs-topic", default="servegate-jobs", show_default=True)
@click.option("--events-topic", default="servegate-job-events", show_default=True)
@click.option("--group-id", default="servegate-jobs", show_default=True)
@store_options
@pass_ctx
def stream_jobs(
    ctx: Ctx, bootstrap_servers: str, jobs_topic: str, events_topic: str, group_id: str
) -> None:
    """Create batch jobs from JOBS_TOPIC (once per job id); publish their state changes."""
    logging_setup()
    from batch.job_topics import run_job_topics

    run_job_topics(ctx.home, bootstrap_servers, jobs_topic, events_topic, group_id)


def logging_setup() -> None:
    import logging

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


# -- loadtest ---------------------------------------------------------------------
def _seconds(text: str) -> float:
    """'30s', '2m', '500ms' or a plain number of seconds."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*(ms|s|m)?\s*", text)
    if not match:
        raise click.BadParameter(f"'{text}' is not a duration like 30s, 2m or 500ms")
    value, unit = float(match[1]), match[2] or "s"
    return value / 1000 if unit == "ms" else value * 60 if unit == "m" else value


@main.command()
@click.option("--url", "target_url", required=True, help="The URL to send requests to.")
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Open loop: requests per second (latency from each intended send time).",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="Closed loop: connections, each with one request in flight.",
)
@click.option("--duration", default="10s", show_default=True, help="e.g. 30s, 2m.")
@click.option(
    "--payload",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The request body, sent as is.",
)
@click.option("--header", "-H", "headers", multiple=True, help="'Name: value', repeatable.")
@click.option(
    "--report", type=click.Path(path_type=Path), default=Path("loadtest.json"), show_default=True
)
@click.option(
    "--plot",
    type=click.Path(path_type=Path),
    default=Path("loadtest.png"),
    show_default=True,
    help="The PNG plot of latency and throughput over time (needs matplotlib).",
)
@click.option("--no-plot", is_flag=True, help="Write no plot (no matplotlib needed).")
def loadtest(
    target_url: str,
    rate: float | None,
    concurrency: int | None,
    duration: str,
    payload: Path,
    headers: tuple[str, ...],
    report: Path,
    plot: Path,
    no_plot: bool,
) -> None:
    """Load-test an endpoint; print throughput and p50/p90/p99/p99.9 latency, write a
    JSON report and a PNG plot."""
    from loadtests import generator
    from loadtests import report as reports

    if (rate is None) == (concurrency is None):
        raise click.UsageError(
            "give exactly one of --rate (open loop) or --concurrency (closed loop)"
        )
    if not no_plot:
        try:  # before the test runs, not after it
            import matplotlib  # noqa: F401
        except ImportError:
            raise click.UsageError(
                "the PNG plot (--plot) needs matplotlib: pip install 'servegate[loadtest]', "
                "or give --no-plot"
            ) from None
    header_map = {"Content-Type": "application/json"} if payload.suffix == ".json" else {}
    for header in headers:
        name, sep, value = header.partition(":")
        if not sep:
            raise click.BadParameter(f"'{header}' is not 'Name: value'", param_hint="--header")
        header_map[name.strip()] = value.strip()
    try:
        target = generator.Target.build(target_url, payload.read_bytes(), header_map)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--url") from None
    seconds = _seconds(duration)
    mode = f"open loop {rate:g} req/s" if rate else f"closed loop {concurrency} connections"
    click.echo(f"{mode} for {seconds:g} s against {target_url}")
    results = generator.run(target, seconds, concurrency=concurrency, rate=rate)
    summary = results.summary()
    click.echo(reports.text(summary))
    settings = {
        "url": target_url,
        "mode": "open" if rate else "closed",
        "rate": rate,
        "concurrency": concurrency,
        "duration_s": seconds,
        "payload": str(payload),
    }
    reports.write_json(report, summary, settings)
    if no_plot:
        click.echo(f"wrote {report}")
        return
    reports.plot(plot, results, f"{target_url} — {mode}")
    click.echo(f"wrote {report} and {plot}")


# -- audit ------------------------------------------------------------------------
@main.group()
def audit() -> None:
    """The audit log of control-plane changes."""


@audit.command("list")
@click.option("--target", default=None, help="e.g. endpoints/demo (its deployments included).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@pass_ctx
def audit_list(ctx: Ctx, target: str | None, limit: int) -> None:
    """Who changed what, when, with the spec before and after; newest first."""
    _print(ctx.client.audit(target, limit))


# -- model monitors -------------------------------------------------------------------
@main.group()
def monitor() -> None:
    """Model monitoring: data drift, prediction drift and data quality of a deployment's
    collected data against a baseline, on a schedule."""


def _put_monitor(
    ctx: Ctx, file: Path, assignments: tuple[str, ...], strict: bool, mode: str
) -> None:
    _, body = _prepared(ctx, MonitorSpec, file, assignments, strict=strict)
    _print_warned(ctx.client.put_monitor(body, mode))


@monitor.command("create")
@_file_options
@pass_ctx
def monitor_create(ctx: Ctx, file: Path, assignments: tuple[str, ...], strict: bool) -> None:
    """Create a monitor from monitor.yml (its baseline file is uploaded)."""
    _put_monitor(ctx, file, assignments, strict, "create")


@monitor.command("update")
@_file_options
@pass_ctx
def monitor_update(ctx: Ctx, file: Path, assignments: tuple[str, ...], strict: bool) -> None:
    """Change a monitor from monitor.yml."""
    _put_monitor(ctx, file, assignments, strict, "update")


@monitor.command("list")
@pass_ctx
def monitor_list(ctx: Ctx) -> None:
    """List model monitors with their last run."""
    _print(ctx.client.list_monitors())


@monitor.command("show")
@click.option("--name", "-n", required=True)
@pass_ctx
def monitor_show(ctx: Ctx, name: str) -> None:
    """The monitor and its last run."""
    _print(ctx.client.show_monitor(name))


@monitor.command("run")
@click.option("--name", "-n", required=True)
@pass_ctx
def monitor_run(ctx: Ctx, name: str) -> None:
    """Run it now, over the rows logged since its last run."""
    _print(ctx.client.run_monitor(name))


@monitor.command("runs")
@click.option("--name", "-n", required=True)
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@pass_ctx
def monitor_runs(ctx: Ctx, name: str, limit: int) -> None:
    """Its runs, newest first: state, window, measures per feature."""
    _print(ctx.client.monitor_runs(name, limit))


@monitor.command("delete")
@click.option("--name", "-n", required=True)
@pass_ctx
def monitor_delete(ctx: Ctx, name: str) -> None:
    """Delete a model monitor and its runs."""
    ctx.client.delete_monitor(name)
    click.echo(f"deleted monitor '{name}'", err=True)


# -- access -----------------------------------------------------------------------
@main.group()
def access() -> None:
    """Who may do what: admin tokens with roles, and who you are signed in as."""


@access.command("whoami")
@pass_ctx
def access_whoami(ctx: Ctx) -> None:
    """The principal your token signs in as: its roles, permissions and endpoints."""
    _print(ctx.client.whoami())


@access.group("token")
def access_token() -> None:
    """Admin tokens: owner, operator, scorer-key-reader, reader."""


@access_token.command("create")
@click.option("-n", "--name", required=True, help="e.g. ci-pipeline")
@click.option(
    "--role",
    type=click.Choice(["owner", "operator", "scorer-key-reader", "reader"]),
    required=True,
)
@click.option("--endpoints", default="", help="Only endpoints matching this pattern (fraud-*).")
@click.option("--expires", default=None, help="e.g. 30d, 12h, 90m (default: never).")
@pass_ctx
def access_token_create(
    ctx: Ctx, name: str, role: str, endpoints: str, expires: str | None
) -> None:
    """Create a token and print it, once: the gateway keeps only its hash
    (`-o tsv --query token` prints the bare token)."""
    _print(ctx.client.create_token(name, role, endpoints, expires))


@access_token.command("list")
@pass_ctx
def access_token_list(ctx: Ctx) -> None:
    """The tokens: names, roles, endpoints, expiry (never the tokens)."""
    _print(ctx.client.list_tokens())


def _name_option(command: Any) -> Any:
    """The name as -n/--name or as the argument (`servegate secret set db-password`)."""
    command = click.argument("positional", metavar="[NAME]", required=False)(command)
    return click.option("-n", "--name", default=None)(command)


def _one_name(name: str | None, positional: str | None) -> str:
    if (name is None) == (positional is None):
        raise click.UsageError("give the name once: as NAME or as -n/--name")
    return name or positional or ""


@access_token.command("revoke")
@_name_option
@pass_ctx
def access_token_revoke(ctx: Ctx, name: str | None, positional: str | None) -> None:
    """Revoke a token: every gateway replica refuses it from its next request."""
    name = _one_name(name, positional)
    ctx.client.revoke_token(name)
    click.echo(f"revoked admin token '{name}'", err=True)


@main.group()
def secret() -> None:
    """Secrets that deployments refer to as ${secret:NAME}: stored encrypted, never shown."""


@secret.command("set")
@_name_option
@pass_ctx
def secret_set(ctx: Ctx, name: str | None, positional: str | None) -> None:
    """Set a secret from stdin (`printf %s "$TOKEN" | servegate secret set api-token`);
    one trailing newline is dropped."""
    name = _one_name(name, positional)
    value = sys.stdin.read()
    value = value[:-1] if value.endswith("\n") else value
    ctx.client.set_secret(name, value)
    click.echo(f"secret '{name}' set", err=True)


@secret.command("list")
@pass_ctx
def secret_list(ctx: Ctx) -> None:
    """Secret names and when each changed (never the values)."""
    _print(ctx.client.list_secrets())


@secret.command("delete")
@_name_option
@pass_ctx
def secret_delete(ctx: Ctx, name: str | None, positional: str | None) -> None:
    """Delete a secret (a deployment that refers to it keeps its loaded instances, but
    cannot load again until the secret is set)."""
    name = _one_name(name, positional)
    ctx.client.delete_secret(name)
    click.echo(f"secret '{name}' deleted", err=True)


@secret.command("rotate")
@pass_ctx
def secret_rotate(ctx: Ctx) -> None:
    """Re-encrypt every secret with the newest key of SERVEGATE_SECRETS_KEY."""
    _print(ctx.client.rotate_secrets())


# -- status -----------------------------------------------------------------------
@main.command("status")
@pass_ctx
def status(ctx: Ctx) -> None:
    """The gateway replicas that are alive (heartbeat), their versions, the last change
    each applied, and who holds which lease (rollouts, batch jobs)."""
    _print(ctx.client.status())


# -- az ml's group names ------------------------------------------------------------------
# `az ml online-endpoint create ...` is `servegate online-endpoint create ...` too: the same
# groups under Azure's names (hidden from the listing, which shows each group once).
main.add_command(endpoint, "online-endpoint")
main.add_command(deployment, "online-deployment")
main.add_command(batch_endpoint, "batch-endpoint")
main.add_command(batch_deployment, "batch-deployment")
batch_endpoint.add_command(batch_invoke, "invoke")  # az ml batch-endpoint invoke
for _alias in ("online-endpoint", "online-deployment", "batch-endpoint", "batch-deployment"):
    main.commands[_alias] = copy.copy(main.commands[_alias])
    main.commands[_alias].hidden = True


if __name__ == "__main__":
    main()
