"""Settings for the container lab's nodes (inventory/lab.py puts them in this group; a VM lab's are not).

They share this machine's kernel, which has no IPVS: the routing mesh and VIPs can't work there, so stacks use
DNS round robin and host-mode ports. Real clusters, the VM lab and the Vagrant lab keep the defaults (a VIP
per service, ports published through the ingress mesh).
"""

stack_vars = {"endpoint_mode": "dnsrr", "publish_mode": "host"}
