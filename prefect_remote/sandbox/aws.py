"""A sandbox AWS on this computer: moto in server mode on loopback, driven through the real boto3, and
an instance runner that boots every instance's user data as a local machine.

Code under test talks to it exactly as to AWS: boto3 finds the endpoint and the (fake) credentials
in the environment (``AWS_ENDPOINT_URL``, honoured by boto3 >= 1.28), so nothing in prefect-remote
knows it is not a cloud. What moto lacks, the sandbox adds:

* **instances that run**: each instance's user data boots as a local machine with a clean
  environment and none of the launcher's files (see :mod:`prefect_remote.sandbox.instances`);
  terminating the instance ends the machine; the machine outlives its user data, as an instance's OS
  does, and powering itself off terminates its instance or stops it (as its
  ``InstanceInitiatedShutdownBehavior`` says: EC2's default is stop);
* **a metadata service per instance** (IMDSv2, :mod:`prefect_remote.sandbox.imds`): its id, region,
  live tags and its instance profile's credentials;
* **an account ready to use**: the store's bucket and an instance profile for the machines;
* **EC2 as strict as the real one** (:attr:`SandboxAWS.ec2`, :mod:`prefect_remote.sandbox.ec2_strict`):
  instances pending with no public IP at first, new ids, profiles and security groups not yet
  visible, throttling, and capacity or quota errors a test injects per zone or subnet;
* **EC2's vCPU quotas** in Service Quotas, as a new account has them (:meth:`SandboxAWS.set_quota`);
* **API call counts** as the server saw them (:attr:`SandboxAWS.calls`).

The test suite starts one per session; ``prefect-remote sandbox aws`` starts the same thing for a
shell. moto comes with the ``sandbox`` extra (``moto[server]``).

>>> with SandboxAWS() as aws:                                   # doctest: +SKIP
...     os.environ.update(aws.exports())
...     prefect_remote.function(cpu=2)(lambda x: x + 1)(1)       # an EC2 instance of the sandbox
"""

from __future__ import annotations

import base64
import collections
import ipaddress
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect_remote.sandbox import ec2_strict
from prefect_remote.sandbox.aws_images import carries_engine, publish_gpu_images
from prefect_remote.sandbox.ec2_strict import StrictEC2, form_params, request_service
from prefect_remote.sandbox.imds import MetadataService
from prefect_remote.sandbox.instances import Instance, InstanceRunner, SandboxCloud
from prefect_remote.sandbox.vpc import VPC, Ingress, private_interface

logger = logging.getLogger(__name__)

# What a sandbox hands to boto3: moto accepts any key, and these make it obvious where they came from.
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
ACCOUNT_ID = "123456789012"  # moto's default account
STORE_BUCKET = "prefect-remote-sandbox"
INSTANCE_PROFILE = "prefect-remote-sandbox"


class SandboxAWS(SandboxCloud):
    """moto's server (ec2, s3, ssm, iam, logs, … in one endpoint) in a thread of this process, plus
    the instance runner and metadata service when ``run_instances`` is on.

    ``port=0`` takes a free port. ``validate_instance_types`` makes ``run_instances`` refuse unknown
    instance types, as EC2 does (moto accepts any by default). ``home`` holds the instances' machine
    folders (default: a temporary folder); ``isolation`` is theirs (``namespace`` where this host
    offers network namespaces). ``expose`` lists ports of services on this host's loopback (a Prefect
    server) that instances reach at ``http://<sandbox_host>:PORT``. ``enforce_iam`` (on by default)
    checks every call against the caller's IAM policies as AWS does
    (:mod:`prefect_remote.sandbox.iam_server`): the exported credentials are a user with exactly the
    docs' launcher and provisioning permissions (:mod:`prefect_remote.providers.aws.permissions`),
    :meth:`keys` gives users with one list each (``launcher``, ``provisioning``, ``teardown``), and
    instances get their instance profile's role through IMDS. :meth:`enforcing` switches the checks
    off for a while (a test that needs them off); :attr:`refusals` says what was refused. Each
    instance boots from a stock image in a root of its own (:mod:`prefect_remote.providers.local.own_root`),
    its user data run by cloud-init on its first boot only; ``warm_cache`` gives instances a warm uv
    cache and shared agent environments instead (:meth:`warm`).
    ``private_network`` (on by default, with namespace isolation) puts each instance's private IP on
    a VPC this host cannot reach, and enforces its security groups' ingress
    (:mod:`prefect_remote.sandbox.vpc`; ``vpc.enforcing(False)`` for one test).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        region: str = "us-east-1",
        validate_instance_types: bool = True,
        run_instances: bool = True,
        home: str | Path | None = None,
        isolation: str | None = None,
        expose: tuple[int, ...] = (),
        enforce_iam: bool = True,
        warm_cache: bool = False,
        private_network: bool = True,
    ) -> None:
        self.host, self.port, self.region = host, port, region
        self.warm_cache = warm_cache
        self._images: dict[str, bool] = {}
        self.private_network = private_network
        self.vpc = VPC()  # the instances' private addresses and their security groups (its knobs)
        self.enforce_iam = enforce_iam
        self.validate_instance_types = validate_instance_types
        self.run_instances = run_instances
        self.isolation = isolation
        self.expose = list(expose)
        self.calls: collections.Counter[str] = collections.Counter()  # "service:Action" -> requests the server answered
        self.ec2 = StrictEC2(self._subnet_zone, region=region)  # what EC2 does that moto does not (its knobs)
        self._home_arg = home
        self._scratch: tempfile.TemporaryDirectory | None = None
        self._server: Any = None
        self._runner: InstanceRunner | None = None
        self._imds: MetadataService | None = None
        self._iam: Any = None  # the enforcing middleware, while enforce_iam
        self._admin: Any = None  # the sandbox's own keys (its set-up): nobody else's
        self.identity: Any = None  # the keys environ() hands out: the docs' launcher and provisioning permissions
        self._identities: dict[str, Any] = {}  # the docs' lists, one user each: launcher, provisioning, teardown
        self._machine_credentials: Any = None

    # -- endpoints ------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The endpoint on this host, e.g. ``http://127.0.0.1:41234``; the server must be started."""
        if self._server is None:
            raise RuntimeError("the AWS sandbox is not started; call start() first")
        host, port = self._server.get_host_and_port()
        return f"http://{host}:{port}"

    @property
    def store(self) -> str:
        return f"s3://{STORE_BUCKET}/store"

    @property
    def runner(self) -> InstanceRunner:
        if self._runner is None:
            raise RuntimeError("this sandbox runs no instances (run_instances=False), or is not started")
        return self._runner

    # -- life ------------------------------------------------------------------------------------------
    def start(self) -> str:
        """Starts the server (and the instance runner), prepares the account, and returns the endpoint."""
        if self._server is not None:
            return self.url
        try:
            import moto.settings
            from moto.moto_server.threaded_moto_server import ThreadedMotoServer
        except ImportError:
            raise RuntimeError("the AWS sandbox needs moto: pip install 'prefect-remote[sandbox]' (moto[server]>=5.2)") from None
        # moto reads MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION once, at import; this server runs in this
        # process, so its module setting is what counts.
        moto.settings.EC2_ENABLE_INSTANCE_TYPE_VALIDATION = self.validate_instance_types
        # One line per request otherwise, and a traceback for each call of a service moto lacks (the
        # Pricing API: the price table falls back to its bundled prices).
        logging.getLogger("werkzeug").setLevel(logging.CRITICAL)
        sandbox = self

        class CountingServer(ThreadedMotoServer):
            def _server_entry(self) -> None:
                from moto.moto_server.threaded_moto_server import MotoRequestHandler
                from moto.server import DomainDispatcherApplication, create_backend_app
                from werkzeug.serving import make_server

                moto_app = sandbox.ec2.wrap(DomainDispatcherApplication(create_backend_app))
                app = _Counting(sandbox._guarded(moto_app), sandbox.calls)
                self._server = make_server(self._ip_address, self._port, app, True, request_handler=MotoRequestHandler)
                self._server_ready_event.set()
                self._server.serve_forever()

        server = CountingServer(ip_address=self.host, port=self.port, verbose=False)
        server.start()
        self._server = server
        ec2_strict.install(self.ec2)
        if self.enforce_iam:
            self._make_identities()
        self._prepare_account()
        _serve_ec2_quotas()
        if self._iam is not None:
            self._iam.on = True  # from here on, every call is checked
        self.ec2.settle_everything()  # the account as provisioned long ago
        self.ec2.on = True
        if self.run_instances:
            if self._home_arg is None:
                self._scratch = tempfile.TemporaryDirectory(prefix="prefect-remote-sandbox-aws-")
            home = Path(self._home_arg or self._scratch.name)  # type: ignore[union-attr]
            self._imds = MetadataService(self.host)
            self._runner = InstanceRunner(
                home / "home",
                instances=self._instances,
                terminate=self._terminate,
                image_env=self._image_env,
                booted=self._booted,
                isolation=self.isolation,
                vpc=self.vpc if self.private_network else None,
                ingress=self._ingress,
            )
            if self._runner.vpc is not None:
                self._runner.vpc.create()
            self._root = home / "root"
            _place_on_launch(self)
            self._runner.start()
            self._start_forwards()
        return self.url

    def stop(self) -> None:
        """Ends every instance's machine, then stops the server; everything it held is gone."""
        self._stop_forwards()
        self._close_black_hole()
        ec2_strict.uninstall(self.ec2)
        if self in _PLACING:
            _PLACING.remove(self)
        if self._runner is not None:
            self._runner.stop()
            if self._runner.vpc is not None:
                self._runner.vpc.remove()
            self._runner = None
        if self._imds is not None:
            self._imds.close()
            self._imds = None
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    def end_all_instances(self, timeout: float = 30.0) -> list[str]:
        """Terminates every instance still alive (as a test's clean-up or a user's reset), and waits
        until their machines have ended; returns their ids."""
        alive = [instance.id for instance in self._instances() if not instance.ended]
        for instance_id in alive:
            self._terminate(instance_id, "terminated by the sandbox")
        if self._runner is not None:
            self._runner.wait_idle(timeout)
        return alive

    # -- what a shell or a test needs ----------------------------------------------------------------------
    def keys(self, identity: str = "launcher", *, instance_id: str | None = None) -> dict[str, str]:
        """The credential variables (``AWS_ACCESS_KEY_ID``…, for ``monkeypatch.setenv``) of a user with
        exactly one of the docs' lists (``launcher``, ``provisioning`` or ``teardown``), or of a
        ``machine``: the session of instance ``instance_id``'s profile that its IMDS serves, so that
        ``ec2:SourceInstanceARN`` names that instance (without one, a session of the sandbox's
        profile for an instance that does not exist). With IAM not enforced, the sandbox's fake keys."""
        if not self.enforce_iam:
            return dict(FAKE_CREDENTIALS)
        if identity == "machine" and self._machine_credentials is not None:
            instance, profile, region = "i-sandboxmachinekeys", INSTANCE_PROFILE, self.region
            if instance_id is not None:
                found = self._moto_instance(instance_id)
                if found is None or found[1].state == "terminated":
                    raise ValueError(f"no running instance {instance_id} to take the credentials of")
                backend, moto_instance = found
                profile, region, instance = self._profile(backend, moto_instance), moto_instance.region_name, instance_id
                if profile is None:
                    raise ValueError(f"instance {instance_id} has no instance profile: IMDS serves it no credentials")
            session = self._machine_credentials.for_instance(instance, region, profile) or {}
            return {
                "AWS_ACCESS_KEY_ID": session["AccessKeyId"],
                "AWS_SECRET_ACCESS_KEY": session["SecretAccessKey"],
                "AWS_SESSION_TOKEN": session["Token"],
            }
        if identity not in self._identities:
            raise ValueError(f"no such identity {identity!r}; the sandbox has {', '.join([*self._identities, 'machine'])}")
        return self._identities[identity].environ()

    def environ(self) -> dict[str, str]:
        """The variables that point boto3 (and the AWS CLI) at this sandbox."""
        credentials = self.identity.environ() if self.identity is not None else FAKE_CREDENTIALS
        return {"AWS_ENDPOINT_URL": self.url, "AWS_DEFAULT_REGION": self.region, **credentials}

    def exports(self) -> dict[str, str]:
        """Everything a shell needs to use the sandbox by default: boto3's endpoint, region and
        credentials, the aws provider with the sandbox's instance profile, the store in its bucket,
        ``PREFECT_REMOTE_SANDBOX_HOST``, and its images' registry and engine (:meth:`use_images`)."""
        return {
            **self.environ(),
            "PREFECT_REMOTE_PROVIDER": "aws",
            "PREFECT_REMOTE_STORE": self.store,
            "PREFECT_REMOTE_AWS_INSTANCE_PROFILE": INSTANCE_PROFILE,
            "PREFECT_REMOTE_AWS_PUBLIC_IP": self.sandbox_host,  # "me", as the instances see this host
            "PREFECT_REMOTE_SANDBOX_HOST": self.sandbox_host,
            **self._images_exports(),
        }

    def client(self, service: str, region: str | None = None) -> Any:
        """A boto3 client of this sandbox with its own credentials, whatever the environment holds (a
        test's or a script's view of the account: ``aws.client("ec2").describe_instances()``), in
        ``region`` (default: the sandbox's)."""
        import boto3

        if self._admin is not None:  # IAM enforced: the sandbox's own keys, allowed everything
            credentials = self._admin.session_kwargs()
        else:
            credentials = {name.lower(): value for name, value in FAKE_CREDENTIALS.items()}
        return boto3.session.Session(region_name=region or self.region, **credentials).client(service, endpoint_url=self.url)

    def set_quota(self, code: str, value: float | None) -> None:
        """Sets the EC2 vCPU quota ``code`` (``L-1216C47A``…) that Service Quotas answers in this
        sandbox's account and region (None: back to :data:`EC2_QUOTAS`' default). Read only: no
        launch is refused for it."""
        from moto.servicequotas.models import servicequotas_backends

        _serve_ec2_quotas()
        quotas = servicequotas_backends[ACCOUNT_ID][self.region].__dict__.setdefault("ec2_quotas", {})
        if value is None:
            quotas.pop(code, None)
        else:
            quotas[code] = float(value)

    # -- the account ----------------------------------------------------------------------------------------
    def make_instance_profile(self, name: str) -> None:
        """Makes a role for EC2 and its instance profile, both named ``name``, with the sandbox's own
        keys (as provisioning does: EC2 then refuses the profile for ``ec2.profile_seconds``)."""
        import json

        iam = self.client("iam")
        trust = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
        }
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))
        iam.create_instance_profile(InstanceProfileName=name)
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)

    def _prepare_account(self) -> None:
        import json

        s3, iam = self.client("s3"), self.client("iam")
        if not _exists(lambda: iam.get_role(RoleName=INSTANCE_PROFILE)):  # (moto's account is this process's, shared by its sandboxes)
            if self.region == "us-east-1":
                s3.create_bucket(Bucket=STORE_BUCKET)
            else:
                s3.create_bucket(Bucket=STORE_BUCKET, CreateBucketConfiguration={"LocationConstraint": self.region})
            self.make_instance_profile(INSTANCE_PROFILE)
        _route_default_vpc_out(self.client("ec2"))
        if self.enforce_iam:  # as provisioning leaves an account: the machines' policy, their log group
            from prefect_remote.providers.aws.permissions import POLICY_NAME, machine_policy
            from prefect_remote.providers.aws.provider import AWSOptions

            log_group = AWSOptions.model_fields["log_group"].default
            policy = machine_policy(
                account=ACCOUNT_ID, region=self.region, role=INSTANCE_PROFILE, bucket=STORE_BUCKET, prefix="store", log_group=log_group
            )
            iam.put_role_policy(RoleName=INSTANCE_PROFILE, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(policy))
            logs = self.client("logs")
            if not logs.describe_log_groups(logGroupNamePrefix=log_group)["logGroups"]:
                logs.create_log_group(logGroupName=log_group)
        publish_gpu_images(ACCOUNT_ID, self.region)  # AWS's public GPU image (DLAMI) and its parameters, which moto lacks
        self.calls.clear()  # the sandbox's own set-up is not the code under test's

    # -- the instance runner's view of moto --------------------------------------------------------------------
    def _backends(self) -> Iterator[tuple[str, Any]]:
        from moto.ec2.models import ec2_backends

        account = ec2_backends[ACCOUNT_ID]
        for region in list(account.keys()):  # only regions in use are loaded
            yield region, account[region]

    def _moto_instance(self, instance_id: str) -> tuple[Any, Any] | None:
        for _, backend in self._backends():
            for instance in backend.all_instances():
                if instance.id == instance_id:
                    return backend, instance
        return None

    def _instances(self) -> Iterator[Instance]:
        for _, backend in self._backends():
            for instance in backend.all_instances():
                yield _as_instance(instance)

    def _terminate(self, instance_id: str, reason: str, exit_code: int | None = None) -> None:
        """The instance's machine has ended (or never booted): the instance is terminated, or stopped
        where it was stopped through the API or its own shutdown asks for that (EC2 keeps no exit code)."""
        found = self._moto_instance(instance_id)
        if found is None:
            return
        backend, instance = found
        if instance.state == "shutting-down":  # terminated through the API: its machine has now ended
            instance._state.name, instance._state.code = "terminated", 48
        elif instance.state not in ("terminated", "stopping", "stopped"):  # the machine shut itself down
            from moto.ec2.models.instances import StateReason

            # As its InstanceInitiatedShutdownBehavior says: EC2's default, stop, keeps the instance (and
            # its volume, which bills on); terminate ends it.
            if instance.instance_initiated_shutdown_behavior == "terminate":
                backend.terminate_instances([instance_id])
            else:
                backend.stop_instances([instance_id])
            instance.state_reason = StateReason(
                "Client.InstanceInitiatedShutdown: Instance initiated shutdown", "Client.InstanceInitiatedShutdown"
            )
        if self._imds is not None:
            self._imds.forget(instance_id)
        if self._machine_credentials is not None:
            self._machine_credentials.forget(instance_id)

    def _image_env(self, instance: Instance) -> dict[str, str]:
        """What the sandbox's machine image sets: where the AWS API and the metadata service are (as
        the instance reaches them), a warm image's shared folders (:attr:`warm_cache`) and its engine's configuration."""
        assert self._imds is not None and self._runner is not None
        self._imds.register(instance.id, lambda: self._facts(instance.id))
        return {
            "AWS_ENDPOINT_URL": self._runner.reachable_url(self.url),
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": self._runner.reachable_url(self._imds.url) + f"/{instance.id}",
            **self._image_cache_env(instance.id),
            **self._engine_env(instance.id),
            **({} if instance.egress else self.no_egress_env()),
        }

    def _booted(self, instance: Instance, machine: Any) -> None:
        """The instance's public IP is its machine's address on this host's bridge; its private IP,
        moto's, is on the VPC's bridge (:mod:`~prefect_remote.sandbox.vpc`). With no VPC (process
        isolation) the machine has one address, which is both."""
        found = self._moto_instance(instance.id)
        if found is not None and machine.public_address:
            nic = next(iter(found[1].nics.values()))
            if self.runner.vpc is None or instance.private_address is None:
                nic.private_ip_address = machine.private_address
            if nic.public_ip:
                nic.public_ip = machine.public_address
            self.ec2.readdress(found[1], machine.public_address)  # the one it shows once running, if it gets one

    def _ingress(self, instance: Instance) -> list[Ingress]:
        """What the instance's security groups admit: a rule's CIDRs, or the private addresses of the
        running members of the group it names (as EC2 matches a group reference)."""
        found = self._moto_instance(instance.id)
        if found is None or not found[1].nics:
            return []
        backend, moto_instance = found
        members: dict[str, list[str]] = collections.defaultdict(list)  # group id -> its members' private IPs
        for other in backend.all_instances():
            if other.state in ("pending", "running") and other.nics:
                for group in next(iter(other.nics.values())).group_set:
                    members[group.id].append(other.private_ip)
        rules = []
        for group in next(iter(moto_instance.nics.values())).group_set:
            for rule in group.ingress_rules:
                ports = None if rule.ip_protocol in ("-1", "icmp") or rule.from_port in (None, -1) else (rule.from_port, rule.to_port)
                sources = [rule.ip_range.get("CidrIp") or rule.ip_range.get("CidrIpv6")] if rule.ip_range else []
                if rule.source_group.get("GroupId"):
                    sources += members[rule.source_group["GroupId"]]
                rules.append(Ingress(rule.ip_protocol or "-1", ports, tuple(source for source in sources if source)))
        return rules

    def _subnet_zone(self, subnet_id: str) -> str | None:
        """The availability zone of ``subnet_id``, as moto holds it."""
        from moto.ec2.exceptions import InvalidSubnetIdError

        for _, backend in self._backends():
            try:
                return backend.get_subnet(subnet_id).availability_zone
            except InvalidSubnetIdError:
                continue
        return None

    def _facts(self, instance_id: str) -> dict[str, Any] | None:
        found = self._moto_instance(instance_id)
        if found is None:
            return None
        backend, instance = found
        profile = self._profile(backend, instance)
        return {
            "instance-id": instance.id,
            "instance-type": instance.instance_type,
            "ami-id": instance.image_id,
            "local-ipv4": instance.private_ip,
            "public-ipv4": instance.public_ip,
            "placement/region": instance.region_name,
            "placement/availability-zone": instance.placement,
            "tags": dict(backend.tags.get(instance.id, {})),
            "role": profile,
            **self._role_facts(instance, profile),
        }

    @staticmethod
    def _profile(backend: Any, instance: Any) -> str | None:
        """The instance profile of the instance, or of its launch: moto attaches a launch's profile
        to its first instance only."""
        for reservation in list(backend.reservations.values()):
            if any(member.id == instance.id for member in reservation.instances):
                for member in reservation.instances:
                    association = backend.iam_instance_profile_associations.get(member.id)
                    if association is not None:
                        return association.iam_instance_profile.name
        return None

    def _iam_gate(self) -> Any:
        return self._iam

    def _forwarded(self) -> list[str]:
        return [self.url, *([self._imds.url] if self._imds else [])]

    # -- IAM, as AWS enforces it (enforce_iam) ---------------------------------------------------------
    def _guarded(self, app: Any) -> Any:
        """moto's app behind the sandbox's IAM evaluator (on once the account is ready), or as it is."""
        if not self.enforce_iam:
            return app
        import moto.settings

        from prefect_remote.sandbox.iam_server import IAMEnforcer

        # moto's own check would run after this one and refuse what AWS allows (specific ARNs): off.
        moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")
        self._iam = IAMEnforcer(app, account=ACCOUNT_ID, on=False)
        return self._iam

    def _make_identities(self) -> None:
        from prefect_remote.sandbox import aws_identities as identities

        self._admin = identities.make_user("prefect-remote-sandbox-admin", {"all": identities.ADMIN_POLICY}, account=ACCOUNT_ID)
        policies = identities.policies(ACCOUNT_ID)
        for name, policy in policies.items():
            self._identities[name] = identities.make_user(f"prefect-remote-sandbox-{name}", {name: policy}, account=ACCOUNT_ID)
        exported = {name: policies[name] for name in ("launcher", "provisioning")}
        self.identity = identities.make_user("prefect-remote-sandbox-user", exported, account=ACCOUNT_ID)
        self._machine_credentials = identities.MachineCredentials(ACCOUNT_ID)

    def _role_facts(self, instance: Any, profile: str | None) -> dict[str, Any]:
        """With IAM enforced, IMDS names the profile's role and serves an STS session of it, so that
        the instance's calls are checked against the role's policy (else moto takes any key)."""
        if self._machine_credentials is None or profile is None:
            return {}
        role = self._machine_credentials.role_of(profile)
        if role is None:
            return {"role": None}
        held = self._machine_credentials
        return {"role": role.name, "credentials": lambda: held.for_instance(instance.id, instance.region_name, profile)}


def _route_default_vpc_out(ec2: Any) -> None:
    """Gives the default VPC what AWS gives it and moto does not: an internet gateway, and a route to
    it for 0.0.0.0/0 in its main route table (its subnets' instances with a public IP reach the
    internet; see :func:`_has_egress`)."""
    [vpc] = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    vpc_id = vpc["VpcId"]
    if ec2.describe_internet_gateways(Filters=[{"Name": "attachment.vpc-id", "Values": [vpc_id]}])["InternetGateways"]:
        return
    gateway = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc_id)
    filters = [{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "association.main", "Values": ["true"]}]
    [main] = ec2.describe_route_tables(Filters=filters)["RouteTables"]
    ec2.create_route(RouteTableId=main["RouteTableId"], DestinationCidrBlock="0.0.0.0/0", GatewayId=gateway)


def _exists(lookup: Any) -> bool:
    from botocore.exceptions import ClientError

    try:
        lookup()
    except ClientError:
        return False
    return True


def _as_instance(instance: Any) -> Instance:
    user_data = instance.user_data
    script = cloud_init(instance.id, base64.b64decode(str(user_data))) if user_data else None
    private = None
    if instance.private_ip and instance.vpc_id:
        private = private_interface(instance.private_ip, instance.ec2_backend.get_vpc(instance.vpc_id).cidr_block)
    return Instance(
        instance.id,
        instance.state,
        script,
        instance.instance_type,
        instance.region_name,
        egress=_has_egress(instance),
        private_address=private,
        engine_installer=None if carries_engine(instance) else "dnf",
    )


def _has_egress(instance: Any) -> bool:
    """Whether moto's ``instance`` reaches the internet (the package index), as a VPC routes it: a
    public IP and a default route to an internet gateway, or a default route to a NAT gateway, in
    its subnet's route table (else its VPC's main one)."""
    nic = instance.nics[0] if instance.nics else None
    public = getattr(instance, "_sandbox_public_ip", None) or (nic.public_ip if nic is not None else None)
    tables = [table for table in instance.ec2_backend.route_tables.values() if table.vpc_id == instance.vpc_id]
    table = next((t for t in tables if instance.subnet_id in t._associations.values()), None)
    table = table or next((t for t in tables if t.main_association_id is not None), None)
    for route in table.routes if table is not None else []:
        if route.destination_cidr_block != "0.0.0.0/0":
            continue
        if route.nat_gateway is not None or (public and route.gateway is not None and route.gateway.id.startswith("igw-")):
            return True
    return False


# What the sandbox's EC2 image boots: cloud-init's final stage as it runs scripts. Every boot runs the
# per-boot scripts (/var/lib/cloud/scripts/per-boot/, in name order), then the user data on the
# instance's first boot only (cloud-init's per-instance semaphore, on the instance's own disk); on
# a later boot nothing else runs, and the instance stays up running nothing, as on EC2.
_CLOUD_INIT = """#!/bin/bash
# prefect-remote sandbox EC2 image: cloud-init (scripts_per_boot, then scripts_user once per instance)
cd /
for script in /var/lib/cloud/scripts/per-boot/*; do
  if [ -f "$script" ] && [ -x "$script" ]; then "$script" || echo "cloud-init: per-boot script $script failed ($?)"; fi
done
semaphore=/var/lib/cloud/instances/@ID@/sem/config_scripts_user
if [ -e "$semaphore" ]; then
  exec sleep infinity
fi
mkdir -p "${semaphore%/*}" /var/lib/cloud/instance/scripts
base64 -d > /var/lib/cloud/instance/scripts/part-001 <<'USER_DATA'
@USER_DATA@
USER_DATA
chmod 700 /var/lib/cloud/instance/scripts/part-001
touch "$semaphore"
exec /var/lib/cloud/instance/scripts/part-001
"""


def cloud_init(instance_id: str, user_data: bytes) -> str:
    """The boot script of an instance with ``user_data`` (a shell script): cloud-init's, as the image runs it."""
    encoded = base64.encodebytes(user_data).decode().strip()
    return _CLOUD_INIT.replace("@ID@", instance_id).replace("@USER_DATA@", encoded)


# EC2's on-demand vCPU quotas as Service Quotas gives a new account (moto serves only the VPC's):
# Standard (A, C, D, H, I, M, R, T, Z) 5 vCPUs, G and VT 0, P 0. Others: 0.
EC2_QUOTAS = {"L-1216C47A": ("Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances", 5.0)}


def _serve_ec2_quotas() -> None:
    """Makes moto's Service Quotas answer EC2's vCPU quotas: :data:`EC2_QUOTAS`, or a sandbox's
    :meth:`SandboxAWS.set_quota`."""
    from moto.servicequotas.models import ServiceQuotasBackend

    if getattr(ServiceQuotasBackend.get_service_quota, "_sandbox_ec2", False):
        return
    original = ServiceQuotasBackend.get_service_quota

    def get_service_quota(backend: Any, service_code: str, quota_code: str) -> dict[str, Any]:
        if service_code != "ec2" or not quota_code.startswith("L-"):
            return original(backend, service_code, quota_code)
        name, value = EC2_QUOTAS.get(quota_code, (f"Running On-Demand instances ({quota_code})", 0.0))
        value = backend.__dict__.get("ec2_quotas", {}).get(quota_code, value)
        arn = f"arn:aws:servicequotas:{backend.region_name}:{backend.account_id}:ec2/{quota_code}"
        return {
            "ServiceCode": "ec2",
            "ServiceName": "Amazon Elastic Compute Cloud (Amazon EC2)",
            "QuotaArn": arn,
            "QuotaCode": quota_code,
            "QuotaName": name,
            "Value": value,
            "Unit": "None",
            "Adjustable": True,
            "GlobalQuota": False,
        }

    get_service_quota._sandbox_ec2 = True  # type: ignore[attr-defined]
    ServiceQuotasBackend.get_service_quota = get_service_quota  # type: ignore[method-assign]


_PLACING: list[SandboxAWS] = []  # sandboxes of this process whose runner boots instances as moto creates them


def _place_on_launch(sandbox: SandboxAWS) -> None:
    """Boots instances inside ``RunInstances`` itself (as EC2 places them before answering), so its
    answer, like EC2's, already has each instance's private address: a cluster's workers are told
    their scheduler's address from it. ``TerminateInstances`` leaves a running machine's instance
    shutting-down until the machine has ended, as EC2 does; ``RebootInstances`` restarts its machine."""
    from moto.ec2.models.instances import InstanceBackend

    _PLACING.append(sandbox)
    if getattr(InstanceBackend.run_instances, "_sandbox_places", False):
        return
    original = InstanceBackend.run_instances

    def run_instances(backend: Any, *args: Any, **kwargs: Any) -> Any:
        reservation = original(backend, *args, **kwargs)
        for instance in reservation.instances:
            _in_its_subnet(instance)
        for placing in list(_PLACING):
            for instance in reservation.instances:
                placing.runner.boot(_as_instance(instance))
        return reservation

    def terminate_instances(backend: Any, instance_ids: list[str]) -> Any:
        # As on EC2, an instance whose machine still runs is shutting-down, not terminated, until
        # the machine has ended (its processes stopped): the runner then terminates it.
        result = original_terminate(backend, instance_ids)
        for placing in list(_PLACING):
            for instance in backend.get_multi_instances_by_id(instance_ids):
                if placing.runner.machine_of(instance.id):
                    instance._state.name, instance._state.code = "shutting-down", 32
        return result

    def reboot_instances(backend: Any, instance_ids: list[str]) -> Any:
        # EC2 restarts the instance's OS: its machine ends and boots again (cloud-init decides what runs).
        result = original_reboot(backend, instance_ids)
        for placing in list(_PLACING):
            for instance in result:
                if placing.runner.machine_of(instance.id):
                    placing.runner.reboot(instance.id)
        return result

    original_terminate = InstanceBackend.terminate_instances
    original_reboot = InstanceBackend.reboot_instances
    InstanceBackend.reboot_instances = reboot_instances  # type: ignore[method-assign]
    run_instances._sandbox_places = True  # type: ignore[attr-defined]
    InstanceBackend.run_instances = run_instances  # type: ignore[method-assign]
    InstanceBackend.terminate_instances = terminate_instances  # type: ignore[method-assign]


def _in_its_subnet(instance: Any) -> None:
    """Gives an instance launched with no ``SubnetId`` an address of the subnet it is placed in (the
    default subnet), as EC2 does: moto gives it a random 10.x.y.z (EC2-Classic's), outside its VPC."""
    nic = instance.nics.get(0)
    if nic is None or nic.subnet is None or not nic.private_ip_address:
        return
    if ipaddress.ip_address(nic.private_ip_address) not in ipaddress.ip_network(nic.subnet.cidr_block):
        address = nic.subnet.get_available_subnet_ip(instance)
        nic.private_ip_address, nic.private_ip_addresses = address, [{"Primary": True, "PrivateIpAddress": address}]


class _Counting:
    """WSGI middleware counting requests by service and action, as CloudTrail would."""

    def __init__(self, app: Any, counter: collections.Counter[str]) -> None:
        self.app, self.counter = app, counter

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.counter[_action(environ)] += 1
        return self.app(environ, start_response)


def _action(environ: dict[str, Any]) -> str:
    """``service:Action`` of a request (query, JSON and REST protocols)."""
    service = request_service(environ)
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return f"{service}:{target.rpartition('.')[2]}"
    if environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
        return f"{service}:{form_params(environ).get('Action', '?')}"
    return f"{service}:{environ.get('REQUEST_METHOD', '?')}"
