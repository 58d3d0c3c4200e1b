# /main.py on a flashed node (`reverbere node flash`): MicroPython runs it at boot.
import fwboot

fwboot.run()
