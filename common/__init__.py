"""The framework every stage shares, outside every stage: command line, files, run folders, devices,
outcome bars and their statistics. Import a module's names directly, e.g.

    from common.cli import UserError, run_cli
    from common.runs import check_artifact
"""
