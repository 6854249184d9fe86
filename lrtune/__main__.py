from lrtune.cli import app

app()
