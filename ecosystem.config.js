// pm2 processes for a miner and a validator: `pm2 start ecosystem.config.js` (docs/OPERATIONS.md, section 4).
// Edit the args (bucket, run spec, netuid, wallet). S3 settings and keys, yours (MR_S3_*) and the scoped ones
// published on chain (MR_PUBLIC_*), go in .env, which each process reads itself (see .env.example). Set none of
// them here, not even empty: the process environment wins over .env, so an empty value would hide yours.
const python = `${__dirname}/.venv/bin/python`;

module.exports = {
  apps: [
    {
      name: "mr-miner",
      script: "miner.py",
      interpreter: python,
      cwd: __dirname,
      args: "--bucket my-miner-bucket --spec run.json --netuid 1 --subtensor.network finney " +
            "--wallet.name miner --wallet.hotkey default --metrics.port 9101",
      autorestart: true,
      restart_delay: 5000,   // a crash loop (e.g. bad credentials) retries every 5 s, not flat out
      kill_timeout: 30000,   // SIGINT first; the process stops at once and its state is already saved
      env: {
        PYTHONUNBUFFERED: "1",  // log lines reach pm2 as they happen
      },
    },
    {
      name: "mr-validator",
      script: "validator.py",
      interpreter: python,
      cwd: __dirname,
      args: "--bucket my-validator-bucket --spec run.json --netuid 1 --subtensor.network finney " +
            "--wallet.name validator --wallet.hotkey default --metrics.port 9102",
      autorestart: true,
      restart_delay: 5000,
      kill_timeout: 30000,
      env: {
        PYTHONUNBUFFERED: "1",  // log lines reach pm2 as they happen
      },
    },
  ],
};
