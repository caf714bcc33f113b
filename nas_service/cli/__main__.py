from nas_service.cli import app

app()
