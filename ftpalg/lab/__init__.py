"""The network-namespace lab: client — gateway — server, real FTP servers and clients.

Modules (import them directly; this package module stays empty so that the small helper
programs run with `python -m ftpalg.lab.<name>` start fast):

- `netns`: `Lab` (namespaces, veths, addresses, `run`/`popen`/`nft`/`sysctl`), `LabAddresses`.
- `gateway`: nftables rule sets for the gateway (kernel FTP helper path, closed gateway).
- `servers`: pyftpdlib / vsftpd / pure-ftpd in the server namespace, `make_file`.
- `clients`: curl / lftp / ftplib transfers from the client namespace, `TransferResult`.
- `pyftpd_server`, `ftplib_client`: the subprocess programs behind the two modules above.
- `command`: `ftpalg lab` (the lab as a product); `matrix` (which transfers it runs, and
  running them), `table` (the printed report, pure), `capture` (tcpdump + a small pcap
  reader, to show what the kernel's nf_nat_ftp rewrote).
"""
