# The Cairn lab's machines and the Ansible inventory made from them: the single source for
# the Vagrantfile (which loads this file) and for the inventory site.yml is run with.
#
#   ruby lab/inventory.rb [libvirt|virtualbox]     the inventory, YAML, on stdout
#   ruby lab/inventory.rb --machines               the machine list, JSON, on stdout
#
# Nothing here talks to Vagrant, so the inventory can be printed (and tested) without any
# VM or box. docs/lab.md describes the lab.
require "json"
require "yaml"

module CairnLab
  NETWORK_PREFIX = ENV.fetch("CAIRN_LAB_NETWORK", "192.168.56")
  BOX = ENV.fetch("CAIRN_LAB_BOX", "debian/bookworm64")
  PROVIDERS = %w[libvirt virtualbox].freeze
  # Each storage VM gets these extra disks (a ZFS mirror), DISK_SIZE_GB each.
  DISKS_PER_STORAGE = 2
  DISK_SIZE_GB = Integer(ENV.fetch("CAIRN_LAB_DISK_GB", "4"))
  IQN_PREFIX = "iqn.2026-11.io.cairn"
  VOLUME = "vol1"
  VOLUME_SIZE = ENV.fetch("CAIRN_LAB_VOLUME_SIZE", "1G")
  MOUNTPOINT = "/mnt/cairn"

  # name, role, last octet of the private address, memory (MiB) and cpus
  MACHINES = [
    { "name" => "storage1", "role" => "storage", "octet" => 11 },
    { "name" => "storage2", "role" => "storage", "octet" => 12 },
    { "name" => "storage3", "role" => "storage", "octet" => 13 },
    { "name" => "client1", "role" => "client", "octet" => 14 },
  ].map do |m|
    kind = m["role"].upcase
    m.merge(
      "ip" => "#{NETWORK_PREFIX}.#{m["octet"]}",
      "memory" => Integer(ENV.fetch("CAIRN_LAB_#{kind}_MEMORY", m["role"] == "storage" ? "2048" : "1024")),
      "cpus" => Integer(ENV.fetch("CAIRN_LAB_#{kind}_CPUS", "2")),
    )
  end.freeze

  module_function

  def storage
    MACHINES.select { |m| m["role"] == "storage" }
  end

  def clients
    MACHINES.select { |m| m["role"] == "client" }
  end

  def target_host
    storage.first
  end

  # The serial number libvirt gives extra disk `index` (1-based) of a machine; the guest
  # sees it as /dev/disk/by-id/virtio-SERIAL (virtio serials have at most 20 characters).
  def disk_serial(machine, index)
    "cairn-#{machine["name"]}-d#{index}"[0, 20]
  end

  # The extra disks as the guest names them, per provider (docs/lab.md "Disks"):
  # libvirt: virtio disks with a serial set by the Vagrantfile -> stable by-id names.
  # virtualbox: the disks feature attaches them to the box's SATA controller after its
  # system disk, with random serials, so the kernel names /dev/sdb, /dev/sdc are the
  # names known before boot (ZFS finds its members by their labels, not by these names).
  def disk_paths(machine, provider)
    (1..DISKS_PER_STORAGE).map do |i|
      case provider
      when "libvirt" then "/dev/disk/by-id/virtio-#{disk_serial(machine, i)}"
      when "virtualbox" then "/dev/sd#{("a".ord + i).chr}"
      else raise ArgumentError, "unknown provider #{provider.inspect} (#{PROVIDERS.join(", ")})"
      end
    end
  end

  def initiator_name(machine)
    "#{IQN_PREFIX}.lab:#{machine["name"]}"
  end

  def storage_vars(machine, provider)
    {
      "cairn_address" => machine["ip"],
      "cairn_pools" => [
        {
          "name" => "tank",
          "backend" => "zfs",
          "zpool" => "tank",
          "layout" => "mirror",
          "vdevs" => disk_paths(machine, provider),
          "listen" => "#{machine["ip"]}:3232",
        },
      ],
    }
  end

  def client_vars(machine)
    {
      "cairn_address" => machine["ip"],
      "cairn_initiator_name" => initiator_name(machine),
      "cairn_initiator_volumes" => [VOLUME],
      "cairn_initiator_login" => true,
      "cairn_initiator_wait" => true,
      # playbooks/lab_client.yml: ext4 on the volume, mounted by a systemd mount unit
      "cairn_lab_mounts" => [
        { "volume" => VOLUME, "path" => MOUNTPOINT, "fstype" => "ext4" },
      ],
    }
  end

  def hosts(list, &vars)
    list.to_h { |m| [m["name"], vars ? vars.call(m) : nil] }
  end

  # The inventory for one provider, as the Hash that becomes the YAML file.
  def inventory(provider)
    raise ArgumentError, "unknown provider #{provider.inspect} (#{PROVIDERS.join(", ")})" unless PROVIDERS.include?(provider)

    {
      "all" => {
        "vars" => {
          "cairn_lab_provider" => provider,
          "cairn_volumes" => [
            {
              "name" => VOLUME,
              "size" => VOLUME_SIZE,
              "replicas" => storage.length,
              "target_host" => target_host["name"],
              "portal" => "#{target_host["ip"]}:3260",
              "acl" => clients.map { |c| initiator_name(c) },
            },
          ],
        },
        "children" => {
          "cairn_storage" => {
            "vars" => { "cairn_zfs_implementation" => "kernel" },
            "hosts" => hosts(storage) { |m| storage_vars(m, provider) },
          },
          "cairn_targets" => { "hosts" => { target_host["name"] => nil } },
          "cairn_initiators" => { "hosts" => hosts(clients) { |m| client_vars(m) } },
        },
      },
    }
  end

  def inventory_yaml(provider)
    "# Generated from lab/inventory.rb for the #{provider} provider; do not edit (docs/lab.md).\n" +
      inventory(provider).to_yaml
  end

  # Writes DIR/PROVIDER.yml for every provider; returns the paths by provider.
  def write_inventories(dir)
    require "fileutils"
    FileUtils.mkdir_p(dir)
    PROVIDERS.to_h do |provider|
      path = File.join(dir, "#{provider}.yml")
      text = inventory_yaml(provider)
      File.write(path, text) unless File.exist?(path) && File.read(path) == text
      [provider, path]
    end
  end
end

if $PROGRAM_NAME == __FILE__
  arg = ARGV.first || "libvirt"
  if arg == "--machines"
    puts JSON.pretty_generate(CairnLab::MACHINES.map do |m|
      m.merge("disks" => CairnLab::PROVIDERS.to_h { |p| [p, m["role"] == "storage" ? CairnLab.disk_paths(m, p) : []] },
              "serials" => m["role"] == "storage" ? (1..CairnLab::DISKS_PER_STORAGE).map { |i| CairnLab.disk_serial(m, i) } : [])
    end)
  else
    begin
      print CairnLab.inventory_yaml(arg)
    rescue ArgumentError => e
      warn "lab/inventory.rb: #{e.message}"
      exit 2
    end
  end
end
