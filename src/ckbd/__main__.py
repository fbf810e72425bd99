from ckbd.cli.main import run

run()
