"""Differential tests: the same control-channel bytes through the kernel's FTP NAT helper
(nf_conntrack_ftp + nf_nat_ftp) and through ftpalg, compared byte by byte.

Modules (the two peer programs are run with `python -m ftpalg.parity.<name>` inside the lab's
namespaces, so this package module stays empty and they start fast):

- `cases`: the case model, outcome specs and rendering of templates with the lab's addresses.
- `corpus`: the cases themselves (the kernel's tricky inputs and variants), each classed
  mirror / deviation / kernel-stall.
- `client`, `server`: the scripted FTP client and server (they send arbitrary lines);
  `peers` runs them in the lab against whatever the gateway does at the moment.
- `verdict`: what each path delivered, judged against the case's class.
- `pcap`, `seqcheck`: a tiny pcap reader and the seq/ack ledger check against the kernel.
- `runner`: builds the lab, runs both paths; `report`: writes docs/parity.md.
- `python -m ftpalg.parity [--output docs/parity.md]` runs it all.
"""
