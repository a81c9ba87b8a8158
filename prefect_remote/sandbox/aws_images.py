"""AWS's public images that the sandbox AWS serves beyond moto's own: the Deep Learning Base OSS Nvidia
Driver GPU AMI (Amazon Linux 2023), for x86_64 and arm64, with the public SSM parameters that name
them (``/aws/service/deeplearning/ami/<arch>/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id``),
as AWS publishes them in every region. moto knows the Amazon Linux parameters, not these.

Each image is owned by AWS's DLAMI account, public, and has a 75 GiB root snapshot, as the real one
(a root disk smaller than it is refused by EC2). The sandbox's machines boot on this host whatever the
image: what it models is that a GPU launch asks for this image, and may read its parameter.

Which images carry a container engine (:func:`carries_engine`): AWS's ECS-optimized AMIs (moto ships
them and their parameters, ``/aws/service/ecs/optimized-ami/...``) carry Docker; every other one boots
with none, as stock Amazon Linux 2023 does, and its boot installs one (never kinder than EC2: the
DLAMI's engine is not assumed either).
"""

from __future__ import annotations

import datetime
from typing import Any

DLAMI_OWNER = "898082745236"  # the account AWS publishes its Deep Learning AMIs from
DLAMI_PARAMETER = "/aws/service/deeplearning/ami/{arch}/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id"
DLAMI_NAME = "Deep Learning Base OSS Nvidia Driver GPU AMI (Amazon Linux 2023) 20261201"
DLAMI_ROOT_GIB = 75
DLAMI_IDS = {"x86_64": "ami-0d1a7e5b9c3f4a201", "arm64": "ami-0d1a7e5b9c3f4a202"}


def publish_gpu_images(account_id: str, region: str) -> dict[str, str]:
    """Puts the DLAMI GPU images into moto's EC2 of ``region`` and their public parameters into the
    SSM of ``account_id`` there (idempotent); returns {architecture: image id}."""
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.amis import Ami
    from moto.ssm.models import Parameter, ssm_backends

    class GpuAmi(Ami):
        @property
        def block_device_mappings(self) -> list[dict[str, Any]]:
            [root] = super().block_device_mappings
            return [{**root, "Ebs": {**root["Ebs"], "VolumeSize": DLAMI_ROOT_GIB, "VolumeType": "gp3", "DeleteOnTermination": True}}]

    ec2, ssm = ec2_backends[account_id][region], ssm_backends[account_id][region]
    created = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
    for arch, image_id in DLAMI_IDS.items():
        if image_id not in ec2.amis:
            ec2.amis[image_id] = GpuAmi(
                ec2,
                image_id,
                name=f"{DLAMI_NAME} {arch}",
                description=f"{DLAMI_NAME}, {arch}: NVIDIA driver and CUDA preinstalled",
                owner_id=DLAMI_OWNER,
                owner_alias="amazon",
                public=True,
                virtualization_type="hvm",
                architecture=arch,
                root_device_type="ebs",
                root_device_name="/dev/xvda",
                region_name=region,
                creation_date=created,
            )
        name = DLAMI_PARAMETER.format(arch=arch)
        if not ssm._parameters[name]:
            ssm._parameters[name].append(
                Parameter(
                    account_id=account_id,
                    name=name,
                    value=image_id,
                    parameter_type="String",
                    description=None,
                    allowed_pattern=None,
                    keyid=None,
                    last_modified_date=created,
                    version=1,
                    data_type="aws:ec2:image",
                )
            )
    return dict(DLAMI_IDS)


def carries_engine(instance: Any) -> bool:
    """Whether the image moto's ``instance`` booted carries a container engine: AWS's ECS-optimized
    AMIs do (their names: ``al2023-ami-ecs-hvm-…``, ``amzn2-ami-ecs-…``, ``…-amazon-ecs-optimized``)."""
    image = instance.ec2_backend.amis.get(instance.image_id)
    name = (getattr(image, "name", None) or "").lower()
    return "-ecs-" in name or name.endswith("amazon-ecs-optimized")
