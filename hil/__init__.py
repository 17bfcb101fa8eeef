"""Hardware-in-the-loop rigs: device simulators, serial-line emulator, scenarios."""
