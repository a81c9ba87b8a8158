"""Amazon EC2: machines are instances in the user's own account (boto3, the ``aws`` extra).

``provider`` is the client side (``AWSProvider``, ``provider="aws"``), ``runtime`` the machine side
(``EC2Runtime``, standard library only); ``catalog`` knows a region's instance types and chooses
among them; ``prices`` knows what they cost.
"""
