"""The three engines that answer one scenario: `des` (the SimPy simulation), `analytic` (closed form) and `replay` (a real decode on this host). No engine imports another."""
