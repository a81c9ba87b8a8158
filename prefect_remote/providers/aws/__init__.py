"""Amazon EC2: machines are instances in the user's own account (boto3, the ``aws`` extra).

``provider`` is the client side (``AWSProvider``, ``provider="aws"``), ``runtime`` the machine side
(``EC2Runtime``, standard library only); ``options`` are the provider's options, ``clients`` makes
the boto3 clients and names the fix in AWS's errors, ``secrets`` keeps a launch's secrets in SSM,
``network`` finds the subnet and VPC and keeps the security groups, ``tags`` is the tag vocabulary;
``catalog`` knows a region's instance types and chooses among them, ``prices`` what they cost, and
``infra`` sets up an account (``--provision-infra``) and tears it down.
"""
