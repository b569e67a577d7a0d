"""Load generators and benchmark scenarios. They speak HTTP only; nothing imports them."""
