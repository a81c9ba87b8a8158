"""An emulated AWS on this computer: moto in server mode on loopback, driven through the real boto3.

Code under test talks to it exactly as to AWS: boto3 finds the endpoint and the (fake) credentials
in the environment (``AWS_ENDPOINT_URL``, honoured by boto3 >= 1.28), so nothing in prefect-remote
knows it is not a cloud. The test suite starts one per session; ``prefect-remote sandbox aws`` is
meant to start the same thing. moto comes with the ``dev`` dependency group (``moto[server]``).

>>> with SandboxAWS() as aws:                                   # doctest: +SKIP
...     os.environ.update(aws.environ())
...     boto3.client("s3").create_bucket(Bucket="my-envs")
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any

# What a sandbox hands to boto3: moto accepts any key, and these make it obvious where they came from.
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


class SandboxAWS:
    """moto's server (ec2, s3, ssm, iam, logs, … in one endpoint) in a thread of this process.

    ``port=0`` takes a free port. ``validate_instance_types`` makes ``run_instances`` refuse unknown
    instance types, as EC2 does (moto accepts any by default).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, region: str = "us-east-1", validate_instance_types: bool = True) -> None:
        self.host, self.port, self.region = host, port, region
        self.validate_instance_types = validate_instance_types
        self._server: Any = None

    @property
    def url(self) -> str:
        """The endpoint, e.g. ``http://127.0.0.1:41234``; the server must be started."""
        if self._server is None:
            raise RuntimeError("the AWS sandbox is not started; call start() first")
        host, port = self._server.get_host_and_port()
        return f"http://{host}:{port}"

    def start(self) -> str:
        """Starts the server and returns its endpoint URL."""
        if self._server is not None:
            return self.url
        try:
            import moto.settings
            from moto.server import ThreadedMotoServer
        except ImportError:
            raise RuntimeError("the AWS sandbox needs moto: pip install 'moto[server]>=5.2'") from None
        # moto reads MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION once, at import; this server runs in this
        # process, so its module setting is what counts.
        moto.settings.EC2_ENABLE_INSTANCE_TYPE_VALIDATION = self.validate_instance_types
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
        server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        server.start()
        self._server = server
        return self.url

    def stop(self) -> None:
        """Stops the server; everything it held is gone."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def environ(self) -> dict[str, str]:
        """The variables that point boto3 (and the AWS CLI) at this sandbox."""
        return {"AWS_ENDPOINT_URL": self.url, "AWS_DEFAULT_REGION": self.region, **FAKE_CREDENTIALS}

    def __enter__(self) -> SandboxAWS:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None) -> None:
        self.stop()
