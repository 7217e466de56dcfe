"""Peer transport: the only package that imports grpc.

It moves canonical-vector segments between the participants of a round and checks every
byte it receives. It knows nothing of the chain: the node hands it a Roster (accounts,
endpoints, certificates) built from the ledger, and tests hand it a plain one.
"""
